"""End-to-end evaluation over PNG files written into tmp_path."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsplg.evaluate import evaluate_folder, write_eval_outputs

NAMES = ["bg", "cat", "dog"]


@dataclass
class FakeSample:
    image: Path
    label: Path | None
    key: str


def _palette_png(path: Path, arr: np.ndarray) -> None:
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0, 0, 0] * 253)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _sample(root: Path, key: str, gt: np.ndarray | None) -> FakeSample:
    img = root / "images" / f"{key}.jpg"
    if gt is None:
        return FakeSample(img, None, key)
    label = root / "labels" / f"{key}.png"
    _palette_png(label, gt)
    return FakeSample(img, label, key)


@pytest.fixture()
def dataset(tmp_path):
    preds = tmp_path / "preds"
    gt_a = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
    pred_a = np.array([[0, 1, 1], [1, 255, 2]], np.uint8)
    gt_b = np.array([[2, 2], [0, 0]], np.uint8)
    pred_b = np.array([[2, 2], [0, 2]], np.uint8)
    samples = [
        _sample(tmp_path, "a", gt_a),
        _sample(tmp_path, "sub/b", gt_b),  # keys may contain folders
        _sample(tmp_path, "missing", np.zeros((2, 2), np.uint8)),
        _sample(tmp_path, "wrongsize", np.zeros((2, 2), np.uint8)),
        _sample(tmp_path, "nolabel", None),
    ]
    _palette_png(preds / "a.png", pred_a)
    _palette_png(preds / "sub" / "b.png", pred_b)
    _palette_png(preds / "wrongsize.png", np.zeros((3, 2), np.uint8))
    _palette_png(preds / "nolabel.png", np.ones((2, 2), np.uint8))  # must be ignored
    return tmp_path, preds, samples


def test_evaluate_folder_end_to_end(dataset):
    _, preds, samples = dataset
    calls = []
    metrics, cm, errors = evaluate_folder(
        preds, samples, NAMES, progress=lambda d, t: calls.append((d, t))
    )
    # a: (0,0) (0,1) (1,1) (1,1) (2,abstain) ; b: (2,2) (2,2) (0,0) (0,2)
    expected = np.array([[2, 1, 1, 0], [0, 2, 0, 0], [0, 0, 2, 1]])
    np.testing.assert_array_equal(cm.matrix, expected)
    assert metrics["images_evaluated"] == 2
    assert metrics["images_failed"] == 2
    assert calls[-1] == (5, 5) and len(calls) == 5

    by_key = {e["key"]: e for e in errors}
    assert set(by_key) == {"missing", "wrongsize"}
    assert "not found" in by_key["missing"]["error"]
    assert by_key["missing"]["path"].endswith("missing.png")
    assert "(3, 2)" in by_key["wrongsize"]["error"] and "(2, 2)" in by_key["wrongsize"]["error"]

    # bg: TP2 FP0 FN2 -> 50; cat: TP2 FP1 FN0 -> 66.67; dog: TP2 FP1 FN1 -> 50
    rows = {r["name"]: r for r in metrics["per_class"]}
    assert rows["bg"]["iou"] == pytest.approx(50.0)
    assert rows["cat"]["iou"] == pytest.approx(200 / 3)
    assert rows["dog"]["iou"] == pytest.approx(50.0)
    assert metrics["miou"] == pytest.approx((50 + 200 / 3 + 50) / 3)
    assert metrics["coverage"] == pytest.approx(100 * 8 / 9)
    assert metrics["pixel_accuracy"] == pytest.approx(100 * 6 / 9)
    top = metrics["top_confusions"]
    assert {(t["gt"], t["pred"]) for t in top} == {("bg", "cat"), ("bg", "dog")}
    assert all(t["pixels"] == 1 for t in top)


def test_missing_gt_file_is_recorded(tmp_path):
    preds = tmp_path / "preds"
    _palette_png(preds / "x.png", np.zeros((2, 2), np.uint8))
    sample = FakeSample(tmp_path / "x.jpg", tmp_path / "labels" / "x.png", "x")
    metrics, cm, errors = evaluate_folder(preds, [sample], NAMES)
    assert errors == [
        {"key": "x", "path": str(tmp_path / "labels" / "x.png"), "error": errors[0]["error"]}
    ]
    assert "ground-truth" in errors[0]["error"]
    assert metrics["images_evaluated"] == 0
    assert metrics["miou"] is None
    assert cm.matrix.sum() == 0


def test_rgb_label_raises_clear_error(tmp_path):
    label = tmp_path / "labels" / "x.png"
    label.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8), mode="RGB").save(label)
    preds = tmp_path / "preds"
    _palette_png(preds / "x.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="mode RGB"):
        evaluate_folder(preds, [FakeSample(tmp_path / "x.jpg", label, "x")], NAMES)


def test_grayscale_label_is_accepted(tmp_path):
    label = tmp_path / "x.png"
    Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8), mode="L").save(label)
    preds = tmp_path / "preds"
    _palette_png(preds / "x.png", np.array([[0, 1], [2, 0]], np.uint8))
    metrics, _, errors = evaluate_folder(preds, [FakeSample(label, label, "x")], NAMES)
    assert errors == []
    assert metrics["miou"] == pytest.approx(100.0)


def test_corrupt_prediction_is_recorded(tmp_path):
    label = tmp_path / "x.png"
    _palette_png(label, np.zeros((2, 2), np.uint8))
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "x.png").write_bytes(b"not a png")
    _, _, errors = evaluate_folder(preds, [FakeSample(label, label, "x")], NAMES)
    assert len(errors) == 1 and "cannot read prediction" in errors[0]["error"]


def test_write_eval_outputs(dataset, tmp_path):
    _, preds, samples = dataset
    metrics, cm, _ = evaluate_folder(preds, samples, NAMES)
    out = tmp_path / "out" / "eval.json"
    write_eval_outputs(out, metrics, cm, NAMES)
    loaded = json.loads(out.read_text())
    assert loaded["miou"] == pytest.approx(metrics["miou"])
    assert loaded["images_evaluated"] == 2
    assert out.read_text().startswith('{\n  "')  # indent 2
    csv_path = out.with_name("eval_confusion.csv")
    with csv_path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["gt\\pred", "bg", "cat", "dog", "unlabelled"]
    assert rows[1] == ["bg", "2", "1", "1", "0"]
    assert rows[3] == ["dog", "0", "0", "2", "1"]


def test_confidence_floors_score_only_the_sure_pixels(tmp_path):
    """A label run folder: labels/ and confidence/; floors keep pixels at least that sure."""
    run = tmp_path / "run"
    gt = np.array([[0, 0, 1, 1], [2, 2, 1, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 1, 2]], np.uint8)  # wrong at (0,1) and (1,1)
    sure = np.array([[0.9, 0.2, 0.8, 0.9], [0.9, 0.4, 0.6, 0.9]])
    _palette_png(run / "labels" / "a.png", pred)
    from zsplg.data.labels import write_confidence_png

    write_confidence_png(run / "confidence" / "a.png", sure.astype(np.float32))
    samples = [_sample(tmp_path, "a", gt)]
    metrics, _, errors = evaluate_folder(run / "labels", samples, ["c0", "c1", "c2"],
                                         confidence_floors=(0.5, 0.7, 0.0))
    assert not errors
    floors = {row["floor"]: row for row in metrics["confidence_floors"]}
    assert list(floors) == [0.0, 0.5, 0.7]  # sorted
    assert floors[0.0]["kept"] == pytest.approx(100.0)
    assert floors[0.0]["miou"] == pytest.approx(metrics["miou"])
    # >= 0.5 drops exactly the two wrong pixels: 5 of 7 valid pixels, all right
    assert floors[0.5]["kept"] == pytest.approx(100 * 5 / 7)
    assert floors[0.5]["pixel_accuracy"] == pytest.approx(100.0)
    assert floors[0.7]["kept"] == pytest.approx(100 * 4 / 7)  # (1,2) at 0.6 goes too
    with pytest.raises(Exception, match="confidence maps not found"):
        evaluate_folder(tmp_path / "labels", samples, ["c0", "c1", "c2"],
                        confidence_floors=(0.5,))
