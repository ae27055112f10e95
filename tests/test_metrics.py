"""Hand-computed checks for the confusion matrix and derived metrics."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from rich.console import Console

from zsplg.metrics import (
    ConfusionMatrix,
    compute_metrics,
    format_table,
    top_confusions,
    unnamed_classes,
    write_confusion_csv,
)

NAMES3 = ["sky", "road", "car"]


def _cm(pred, gt, num_classes=3, ignore_index=255) -> ConfusionMatrix:
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    cm.update(np.array(pred, dtype=np.uint8), np.array(gt, dtype=np.uint8))
    return cm


def _by_name(metrics: dict) -> dict:
    return {row["name"]: row for row in metrics["per_class"]}


def test_perfect_prediction():
    gt = [[0, 0, 1], [1, 2, 2]]
    cm = _cm(gt, gt)
    assert cm.matrix.dtype == np.int64
    assert cm.matrix.shape == (3, 4)
    np.testing.assert_array_equal(cm.matrix, [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]])
    m = compute_metrics(cm, NAMES3)
    assert m["miou"] == pytest.approx(100.0)
    assert m["pixel_accuracy"] == pytest.approx(100.0)
    assert m["mean_accuracy"] == pytest.approx(100.0)
    assert m["coverage"] == pytest.approx(100.0)
    assert m["frequency_weighted_iou"] == pytest.approx(100.0)
    assert m["num_classes_evaluated"] == 3
    for row in m["per_class"]:
        assert row["iou"] == row["precision"] == row["recall"] == pytest.approx(100.0)
        assert row["gt_pixels"] == row["pred_pixels"] == 2


def test_hand_computed_toy():
    gt = [[0, 0, 0], [1, 1, 2]]
    pred = [[0, 0, 1], [1, 2, 2]]
    cm = _cm(pred, gt)
    np.testing.assert_array_equal(cm.matrix, [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]])
    m = compute_metrics(cm, NAMES3)
    rows = _by_name(m)
    # sky: TP2 FP0 FN1 -> 2/3; road: TP1 FP1 FN1 -> 1/3; car: TP1 FP1 FN0 -> 1/2
    assert rows["sky"]["iou"] == pytest.approx(200 / 3)
    assert rows["road"]["iou"] == pytest.approx(100 / 3)
    assert rows["car"]["iou"] == pytest.approx(50.0)
    assert rows["sky"]["precision"] == pytest.approx(100.0)
    assert rows["sky"]["recall"] == pytest.approx(200 / 3)
    assert rows["road"]["precision"] == pytest.approx(50.0)
    assert rows["car"]["precision"] == pytest.approx(50.0)
    assert rows["car"]["recall"] == pytest.approx(100.0)
    assert rows["road"]["pred_pixels"] == 2
    assert m["miou"] == pytest.approx((200 / 3 + 100 / 3 + 50) / 3)
    assert m["pixel_accuracy"] == pytest.approx(400 / 6)
    assert m["mean_accuracy"] == pytest.approx((200 / 3 + 50 + 100) / 3)
    fw = (3 / 6) * (200 / 3) + (2 / 6) * (100 / 3) + (1 / 6) * 50
    assert m["frequency_weighted_iou"] == pytest.approx(fw)
    json.dumps(m, allow_nan=False)


def test_ignore_pixels_in_gt_are_excluded():
    gt = [[0, 255, 1], [255, 1, 1]]
    pred = [[0, 1, 1], [0, 1, 1]]  # wrong predictions only on ignored pixels
    cm = _cm(pred, gt, num_classes=2)
    assert cm.matrix.sum() == 4
    m = compute_metrics(cm, ["a", "b"])
    assert m["miou"] == pytest.approx(100.0)
    assert m["valid_pixels"] == 4


def test_custom_ignore_index():
    cm = _cm([[1, 0]], [[0, 0]], num_classes=2, ignore_index=0)
    # gt 0 is ignore here, so nothing counts
    assert cm.matrix.sum() == 0


def test_gt_out_of_range_treated_as_ignore():
    gt = [[0, 7, 200], [1, 3, 1]]
    pred = [[0, 0, 0], [1, 0, 1]]
    cm = _cm(pred, gt, num_classes=3)
    np.testing.assert_array_equal(cm.matrix, [[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0]])


def test_predicted_ignore_counts_as_miss():
    gt = [[0, 0, 0, 0], [1, 1, 1, 1]]
    pred = [[0, 0, 255, 9], [1, 1, 1, 1]]  # 255 and 9 (>= C) are abstentions
    cm = _cm(pred, gt, num_classes=2)
    np.testing.assert_array_equal(cm.matrix, [[2, 0, 2], [0, 4, 0]])
    m = compute_metrics(cm, ["a", "b"])
    rows = _by_name(m)
    assert rows["a"]["recall"] == pytest.approx(50.0)
    assert rows["a"]["iou"] == pytest.approx(50.0)  # 2 / (2 + 0 + 2)
    assert rows["a"]["precision"] == pytest.approx(100.0)
    assert rows["a"]["gt_pixels"] == 4
    assert rows["a"]["pred_pixels"] == 2
    assert rows["b"]["iou"] == pytest.approx(100.0)
    assert m["coverage"] == pytest.approx(75.0)
    assert m["pixel_accuracy"] == pytest.approx(75.0)
    assert m["unlabelled_pixels"] == 2
    assert m["miou"] == pytest.approx(75.0)


def test_class_absent_everywhere_is_none_and_excluded():
    gt = [[0, 0, 1, 1]]
    pred = [[0, 1, 1, 1]]
    cm = _cm(pred, gt, num_classes=3)
    m = compute_metrics(cm, NAMES3)
    rows = _by_name(m)
    assert rows["car"]["iou"] is None
    assert rows["car"]["precision"] is None
    assert rows["car"]["recall"] is None
    # sky: 1/(1+0+1)=50; road: 2/(2+1+0)=66.67; mean over 2, not 3
    assert m["miou"] == pytest.approx((50 + 200 / 3) / 2)
    assert m["num_classes_evaluated"] == 2
    assert m["mean_accuracy"] == pytest.approx((50 + 100) / 2)
    assert "NaN" not in json.dumps(m)


def test_class_predicted_but_absent_from_gt_scores_zero():
    gt = [[0, 0, 1, 1]]
    pred = [[0, 2, 1, 1]]
    cm = _cm(pred, gt, num_classes=3)
    m = compute_metrics(cm, NAMES3)
    rows = _by_name(m)
    assert rows["car"]["iou"] == 0.0
    assert rows["car"]["precision"] == 0.0
    assert rows["car"]["recall"] is None
    # sky 50, road 100, car 0 -> mean over all three
    assert m["miou"] == pytest.approx(50.0)
    assert m["num_classes_evaluated"] == 3
    # mean accuracy only over classes present in gt
    assert m["mean_accuracy"] == pytest.approx(75.0)


def test_all_ignore_gives_none():
    cm = _cm([[0, 1], [1, 0]], [[255, 255], [255, 255]], num_classes=2)
    m = compute_metrics(cm, ["a", "b"])
    assert m["miou"] is None
    assert m["pixel_accuracy"] is None
    assert m["mean_accuracy"] is None
    assert m["coverage"] is None
    assert m["frequency_weighted_iou"] is None
    assert m["num_classes_evaluated"] == 0
    assert all(r["iou"] is None for r in m["per_class"])
    json.dumps(m, allow_nan=False)


def test_shape_mismatch_raises_with_both_shapes():
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        cm.update(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8))


def test_class_names_length_checked():
    with pytest.raises(ValueError, match="class names"):
        compute_metrics(ConfusionMatrix(3), ["a", "b"])


def test_merge_equals_single_pass():
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 5, (8, 9)).astype(np.uint8) for _ in range(2)]
    preds = [rng.integers(0, 5, (8, 9)).astype(np.uint8) for _ in range(2)]
    gts[0][0, :4] = 255
    preds[1][1, :4] = 255
    preds[1][2, :2] = 4  # >= num_classes
    whole = ConfusionMatrix(4)
    whole.update(np.stack(preds), np.stack(gts))
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(preds[0], gts[0])
    b.update(preds[1], gts[1])
    b_before = b.matrix.copy()
    assert a.merge(b) is a
    np.testing.assert_array_equal(a.matrix, whole.matrix)
    np.testing.assert_array_equal(b.matrix, b_before)

    c = ConfusionMatrix(4)
    c += ConfusionMatrix(4)
    c.update(preds[0], gts[0])
    c += b
    np.testing.assert_array_equal(c.matrix, whole.matrix)

    with pytest.raises(ValueError):
        a.merge(ConfusionMatrix(5))


def test_update_accumulates_and_handles_large_uint8_index():
    # 200 classes: combined index exceeds uint8/uint16 range without int64 cast.
    cm = ConfusionMatrix(200)
    gt = np.array([[199, 150]], np.uint8)
    cm.update(gt, gt)
    cm.update(np.array([[255, 150]], np.uint8), gt)
    assert cm.matrix[199, 199] == 1
    assert cm.matrix[199, 200] == 1
    assert cm.matrix[150, 150] == 2
    assert cm.matrix.sum() == 4


def test_write_confusion_csv(tmp_path):
    cm = _cm([[0, 0, 1], [1, 255, 2]], [[0, 0, 0], [1, 1, 2]])
    path = tmp_path / "sub" / "cm.csv"
    write_confusion_csv(path, cm, NAMES3)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["gt\\pred", "sky", "road", "car", "unlabelled"],
        ["sky", "2", "1", "0", "0"],
        ["road", "0", "1", "0", "1"],
        ["car", "0", "0", "1", "0"],
    ]


def test_top_confusions_ordering():
    gt = np.array([0] * 10 + [1] * 10 + [2] * 4, np.uint8)
    pred = np.array(
        [0] * 4 + [1] * 5 + [2] * 1  # sky: 5 -> road, 1 -> car
        + [1] * 3 + [0] * 7  # road: 7 -> sky
        + [0] * 2 + [2] * 1 + [255] * 1,  # car: 2 -> sky, 1 abstained
        np.uint8,
    )
    cm = _cm(pred, gt)
    top = top_confusions(cm, NAMES3, k=3)
    assert [(t["gt"], t["pred"], t["pixels"]) for t in top] == [
        ("road", "sky", 7),
        ("sky", "road", 5),
        ("car", "sky", 2),
    ]
    assert top[0]["share_of_gt"] == pytest.approx(70.0)
    assert top[2]["share_of_gt"] == pytest.approx(50.0)  # 2 of 4 car pixels
    assert set(top[0]) >= {"gt", "pred", "pixels", "share_of_gt"}
    everything = top_confusions(cm, NAMES3, k=10)
    assert len(everything) == 4  # diagonal and zero cells never listed
    assert all(t["gt"] != t["pred"] for t in everything)
    with_abstain = top_confusions(cm, NAMES3, k=10, include_unlabelled=True)
    assert ("car", "unlabelled", 1) in [(t["gt"], t["pred"], t["pixels"]) for t in with_abstain]
    json.dumps(top)


def test_unnamed_classes_are_present_but_almost_never_predicted():
    # sky: found; road: 1 of 40 pixels found (2.5 %); car: absent from the ground truth
    gt = np.array([0] * 10 + [1] * 40, np.uint8)
    pred = np.array([0] * 10 + [1] * 1 + [0] * 39, np.uint8)
    metrics = compute_metrics(_cm(pred, gt), NAMES3)
    assert unnamed_classes(metrics) == ["road"]
    assert unnamed_classes(metrics, max_recall=2.0) == []


def test_top_confusions_ties_are_deterministic():
    cm = _cm([[1, 0, 0]], [[0, 1, 2]])
    top = top_confusions(cm, NAMES3, k=5)
    assert [(t["gt_id"], t["pred_id"]) for t in top] == [(0, 1), (1, 0), (2, 0)]


def test_format_table_renders():
    cm = _cm([[0, 0, 1, 255]], [[0, 0, 0, 0]])
    m = compute_metrics(cm, NAMES3)
    table = format_table(m)
    assert table.row_count == 4  # 3 classes + summary
    console = Console(width=120, record=True, color_system=None)
    console.print(table)
    text = console.export_text()
    assert "sky" in text and "car" in text
    assert "mIoU" in text
    assert "50.00" in text  # sky IoU and pixel accuracy
    assert "75.00" in text  # coverage
    assert math.isclose(m["coverage"], 75.0)
