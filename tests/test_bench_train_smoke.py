"""The training benchmarks' --smoke runs: they are what the GPU suite runs at full
size, so CI checks on CPU that both scripts still run end to end and keep their
output contract (one JSON line on stdout, progress on stderr)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_benchmark(script: str, *options: str, timeout: float = 600) -> dict:
    """Run benchmarks/SCRIPT with OPTIONS; its stdout must be exactly one JSON line."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *options],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be one JSON line, got: {done.stdout[-2000:]}"
    return json.loads(lines[0])


def test_train_step_refuses_amp_without_cuda() -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / "train_step.py"), "--device", "cpu",
                           "--amp", "on"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 2
    assert "--amp" in done.stderr


def test_semi_supervised_smoke_skips_without_data(tmp_path: Path) -> None:
    result = run_benchmark("semi_supervised.py", "--smoke", "--device", "cpu",
                           "--data-root", str(tmp_path / "no-camvid"), timeout=300)
    assert "skipped" in result


