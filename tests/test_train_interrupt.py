"""`zsplg train` stopped by SIGTERM (what a scheduler sends before it kills a job):
the step in hand finishes, checkpoints/latest.pt keeps the step reached, the process
exits 130 with a line saying how to resume, and the same command then resumes there
and finishes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_data import make_dataset

ITERS = 80


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def _train_cmd(data: dict[str, Path], out: Path) -> list[str]:
    return [sys.executable, "-m", "zsplg.cli", "train",
            "--labelled", str(data["labelled"]), "--classes", str(data["classes"]),
            "--out", str(out), "--method", "supervised", "--backbone", "efficientnet-lite0",
            "--no-pretrained", "--crop-size", "32", "--batch-size", "2",
            "--iters", str(ITERS), "--lr", "0.01", "--workers", "0",
            "--checkpoint-every", "1000", "--log-every", "1", "--no-tensorboard",
            "--device", "cpu"]


def _logged_steps(history: Path) -> int:
    if not history.exists():
        return 0
    steps = 0
    for line in history.read_text().splitlines():
        try:
            steps = max(steps, int(json.loads(line).get("iter", 0)))
        except (json.JSONDecodeError, ValueError):
            continue  # a line being written right now
    return steps


def test_sigterm_stops_cleanly_then_resumes(tmp_path) -> None:
    data = make_dataset(tmp_path / "data", n_labelled=4, n_unlabelled=0, n_val=0)
    out = tmp_path / "run"
    cmd = _train_cmd(data, out)

    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 240
        while _logged_steps(out / "history.jsonl") < 3:
            if proc.poll() is not None:
                pytest.fail(f"training ended before the signal: exit {proc.returncode}\n"
                            f"{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no training steps logged in time")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    shown = f"exit {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    assert "Traceback" not in stdout + stderr, shown
    assert proc.returncode == 130, shown
    last = [line for line in stderr.splitlines() if line.strip()][-1].strip()
    assert last.startswith("interrupted at step "), shown
    assert last.endswith("run the same command again to resume"), shown
    match = re.match(r"interrupted at step (\d+) of (\d+);", last)
    assert match, shown
    step, total = int(match.group(1)), int(match.group(2))
    assert total == ITERS
    assert 3 <= step < ITERS, f"stopped at {step}: the test proves nothing\n{shown}"

    latest = out / "checkpoints" / "latest.pt"
    assert latest.exists(), shown
    assert torch.load(latest, weights_only=False)["step"] == step
    assert _logged_steps(out / "history.jsonl") == step
    assert not (out / "metrics.json").exists(), "an interrupted run wrote final metrics"

    resumed = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    shown = f"exit {resumed.returncode}\nstdout:\n{resumed.stdout}\nstderr:\n{resumed.stderr}"
    assert resumed.returncode == 0, shown
    assert f"resuming from step {step}" in resumed.stderr, shown
    assert torch.load(latest, weights_only=False)["step"] == ITERS
    assert json.loads((out / "metrics.json").read_text())["steps"] == ITERS
    iters = [json.loads(line)["iter"] for line in
             (out / "history.jsonl").read_text().splitlines()]
    assert iters == list(range(1, ITERS + 1)), "history has gaps or repeats across the resume"
