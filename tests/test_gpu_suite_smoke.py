"""benchmarks/gpu_suite.sh at toy size on the CPU: every part runs and gives its JSON.

The suite's value is one try on a borrowed GPU; a part that breaks there costs its
figures until the next loan. This runs the same script, same parts, at toy size.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"environment", "label_speed", "precision", "train_step", "label_memory",
         "semi_supervised"}


@pytest.mark.slow
def test_smoke_suite_gives_every_part_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--device", "cpu",
                           "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    problems = {r["part"]: r.get("error") for r in lines if "error" in r}
    assert proc.returncode == 0, (problems, proc.stderr[-2000:])
    assert len(lines) >= 4 and {r["part"] for r in lines} == PARTS
    assert not problems
    by_part = {r["part"]: r for r in lines}
    for name in PARTS - {"semi_supervised"}:  # semi: "skipped" without ../shared's CamVid
        assert isinstance(by_part[name].get("result"), dict), by_part[name]
    assert by_part["label_speed"]["result"]["ratio"] > 0
    assert by_part["precision"]["result"]["names"]["bf16"]["masks_named"] > 0
    semi = by_part["semi_supervised"].get("result", {})
    if "rows" in semi:  # CamVid present: every method trained, pseudo labels found
        assert [r["row"] for r in semi["rows"]] == ["supervised", "unimatch",
                                                    "enhanced-reliability"]
        assert semi["rows"][2]["seeds"][0]["pseudo_labels_found"] == 4
    assert (out / "suite.jsonl").read_text().count("\n") == len(lines)


def test_suite_refuses_an_unknown_option_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--devcie", "cpu"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: gpu_suite.sh: unknown option --devcie (see --help)"]
    assert not (tmp_path / "gpu-suite-out").exists()
