"""`zsplg demo`: the sample it builds, and the whole command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from zsplg.cli import app
from zsplg.data.classes import load_class_spec
from zsplg.data.images import read_image
from zsplg.data.labels import read_label, voc_colormap
from zsplg.data.overlay import overlay
from zsplg.data.sources import read_pair_list
from zsplg.demo import DEMO_MAX_SIDE, VOC_CLASSES, build_sample


def test_voc_class_list():
    assert len(VOC_CLASSES) == 21
    assert VOC_CLASSES[0] == "background"
    assert VOC_CLASSES[8] == "cat" and VOC_CLASSES[15] == "person"
    assert VOC_CLASSES[-1] == "tv monitor"


def test_overlay_blends_half_and_half():
    image = np.full((2, 3, 3), 200, dtype=np.uint8)
    label = np.array([[0, 8, 15], [255, 0, 8]], dtype=np.uint8)
    blended = overlay(image, label)
    expected = np.rint(0.5 * 200 + 0.5 * voc_colormap()[label].astype(float))
    assert blended.dtype == np.uint8 and blended.shape == image.shape
    np.testing.assert_array_equal(blended, expected.astype(np.uint8))


def test_build_sample_writes_a_consistent_dataset(tmp_path):
    names = build_sample(tmp_path)
    assert ("voc", True) in names
    assert len(names) >= 2  # the VOC image plus at least one scikit-image photo

    spec = load_class_spec(tmp_path / "classes.txt")
    assert spec.names == list(VOC_CLASSES) and spec.background == 0

    samples = read_pair_list(tmp_path / "pairs.txt")
    assert [s.key for s in samples] == [f"images/{n}" for n, _ in names]
    labelled = [s for s in samples if s.label is not None]
    assert [s.key for s in read_pair_list(tmp_path / "eval_pairs.txt")] == \
        [s.key for s in labelled] == ["images/voc"]
    for sample in samples:
        image = read_image(sample.image)
        assert max(image.shape[:2]) <= DEMO_MAX_SIDE
        if sample.label is not None:
            gt = read_label(sample.label, num_classes=21, expected_size=image.shape[:2])
            assert {0, 15} <= set(np.unique(gt).tolist())  # background and person


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path):
    out = tmp_path / "demo out"
    result = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output

    for name in ("classes.txt", "pairs.txt", "eval_pairs.txt", "eval.json",
                 "eval_confusion.csv", "pseudo/run.json", "ground_truth/voc.png"):
        assert (out / name).is_file(), name
    keys = [s.key for s in read_pair_list(out / "pairs.txt")]
    for key in keys:
        name = key.split("/")[-1]
        image = read_image(out / f"{key}.png")
        label = read_label(out / "pseudo" / "labels" / f"{key}.png", num_classes=21)
        assert label.shape == image.shape[:2]
        assert (out / "pseudo" / "confidence" / f"{key}.png").is_file()
        ov = read_image(out / "overlays" / f"{name}.png")
        assert ov.shape == image.shape

    metrics = json.loads((out / "eval.json").read_text())
    assert isinstance(metrics["miou"], float) and math.isfinite(metrics["miou"])
    assert 0.0 <= metrics["miou"] <= 100.0
    assert metrics["images_evaluated"] == 1 and metrics["images_failed"] == 0
    run = json.loads((out / "pseudo" / "run.json").read_text())
    assert run["status"] == "finished" and run["counts"]["failed"] == 0
    assert run["counts"]["labelled"] == len(keys)


def test_legend_names_the_painted_classes_inside_the_image():
    from zsplg.data.overlay import with_legend

    image = np.full((60, 200, 3), 90, np.uint8)
    label = np.zeros((60, 200), np.uint8)
    label[:30, :100] = 8  # cat
    drawn = with_legend(image, label, ["background"] + ["x"] * 7 + ["cat"], skip=(0, 255))
    assert drawn.shape == image.shape
    bottom = drawn[45:, :60]
    assert (bottom > 200).any()  # the legend's light box sits in the bottom-left corner
    assert (drawn[:20, 150:] == 90).all()  # the rest of the image is untouched
    assert (with_legend(image, np.zeros_like(label), ["background"], skip=(0,)) == image).all()
