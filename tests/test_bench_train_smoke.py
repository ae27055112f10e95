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




def test_semi_supervised_prepare_only_writes_the_voc_split(tmp_path: Path) -> None:
    """The lists `zsplg label` needs before the enhanced row: voc2012-mini's 1/8 split."""
    root = BENCHMARKS.parent.parent / "shared" / "data" / "voc2012-mini"
    if not (root / "train.txt").is_file():
        import pytest

        pytest.skip("voc2012-mini not present")
    result = run_benchmark("semi_supervised.py", "--dataset", "voc", "--prepare-only",
                           "--data-root", str(root), "--out", str(tmp_path), timeout=120)
    train = [x for x in (root / "train.txt").read_text().splitlines() if x.strip()]
    labelled = Path(result["labelled"]).read_text().splitlines()
    unlabelled = Path(result["unlabelled"]).read_text().splitlines()
    assert len(labelled) == len(train) // 8 and len(labelled) + len(unlabelled) == len(train)
    assert not {line.split()[0] for line in labelled} & set(unlabelled)
    assert not any((tmp_path / name).exists() for name in ("supervised", "unimatch"))
