"""Label and evaluate a few real images from ../shared/data (skipped when the
folder is absent, as on a user's clone)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zsplg.cli import app

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VOC = SHARED / "voc2012-mini"

pytestmark = pytest.mark.skipif(not (VOC / "val.txt").exists(),
                                reason=f"shared data not found at {VOC}")


def test_voc_images_label_and_evaluate(tmp_path):
    lines = (VOC / "val.txt").read_text().splitlines()[:6]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"{VOC / line.split()[0]} {VOC / line.split()[1]}\n"
                             for line in lines))
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(app, ["label", "--list", str(pairs), "--classes",
                                 str(VOC / "classes.txt"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", "--pred", str(out / "labels"), "--list", str(pairs),
                                 "--classes", str(VOC / "classes.txt")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["images_evaluated"] == 6 and metrics["coverage"] == 100.0
    background = next(c for c in metrics["per_class"] if c["name"] == "background")
    # Zero-shot on real photos: far from perfect, far from chance (21 classes).
    assert background["iou"] > 50
    assert metrics["miou"] > 15
