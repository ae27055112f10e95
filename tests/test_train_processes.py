"""`zsplg train` as real processes: under torchrun with 2 gloo (CPU) processes, and
killed with SIGKILL mid-run then resumed to the same result as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_data import make_dataset, tiny_config_args


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def _flags(args: dict[str, object]) -> list[str]:
    flags = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            flags += [flag, str(value)]
    return flags


def _train_cmd(args: dict[str, object]) -> list[str]:
    return [sys.executable, "-m", "zsplg.cli", "train", *_flags(args)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("proc-data"), n_labelled=4, n_unlabelled=4)


def test_torchrun_two_gloo_processes(data, tmp_path) -> None:
    out = tmp_path / "ddp"
    args = tiny_config_args(data, out, method="unimatch", iters=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "zsplg.cli", "train", *_flags(args)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = (out / "config.yaml").read_text()
    assert "world_size: 2" in resolved
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    assert state["step"] == 2
    # validation is split across the ranks and summed: every labelled val pixel is counted once
    metrics = json.loads((out / "metrics.json").read_text())
    val_pixels = 0
    for line in data["val"].read_text().split("\n"):
        if line.strip():
            label = np.array(Image.open(data["val"].parent / line.split()[1]))
            val_pixels += int((label != 255).sum())
    assert metrics["valid_pixels"] == val_pixels


def _wait_for_checkpoint(path: Path, proc: subprocess.Popen, min_step: int,
                         timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed: {proc.stderr.read()[-2000:]}")
        if path.exists():
            try:
                if torch.load(path, weights_only=False)["step"] >= min_step:
                    return
            except Exception:  # being replaced right now; poll again
                pass
        time.sleep(0.2)
    pytest.fail("no checkpoint appeared in time")


def test_sigkill_then_resume_matches_uninterrupted(data, tmp_path) -> None:
    settings = dict(method="enhanced", iters=5, conf_thresh=0.0)
    full = tmp_path / "full"
    subprocess.run(_train_cmd(tiny_config_args(data, full, **settings)), env=_env(),
                   check=True, capture_output=True, timeout=300)

    cut = tmp_path / "cut"
    cmd = _train_cmd(tiny_config_args(data, cut, **settings))
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_checkpoint(cut / "checkpoints" / "latest.pt", proc, min_step=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = torch.load(cut / "checkpoints" / "latest.pt", weights_only=False)["step"]
    assert killed_at < 5, "the run finished before the kill; the test proves nothing"

    resumed = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step" in resumed.stderr

    a = torch.load(full / "checkpoints" / "latest.pt", weights_only=False)
    b = torch.load(cut / "checkpoints" / "latest.pt", weights_only=False)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    metrics_a = json.loads((full / "metrics.json").read_text())
    metrics_b = json.loads((cut / "metrics.json").read_text())
    assert metrics_a["miou"] == metrics_b["miou"]
    assert not list((cut / "checkpoints").glob(".*tmp*")), "a temporary file was left behind"
