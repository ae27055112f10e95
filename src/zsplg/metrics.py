"""Confusion-matrix based evaluation of pseudo labels against ground truth.

Pseudo labellers are allowed to abstain (write the ignore index), so the matrix
carries one extra "unlabelled" column. That keeps abstentions visible: they
count as misses for the ground-truth class (lower recall and IoU) and lower the
coverage figure, instead of silently vanishing from the statistics.

All percentages are in [0, 100]. Undefined quantities (a class that appears in
neither ground truth nor prediction) are NaN internally and ``None`` in the
JSON-able dicts, so they can be excluded from means rather than counted as 0.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from zsplg import IGNORE_INDEX

UNLABELLED = "unlabelled"


class ConfusionMatrix:
    """Accumulates (gt, pred) pixel counts over many images.

    Rows are ground-truth classes, columns predicted classes, plus one extra
    column (index ``num_classes``) for valid gt pixels whose prediction is the
    ignore index or otherwise out of range (an abstention).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self._mat = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """The int64 (C, C + 1) count array; the last column is "unlabelled"."""
        return self._mat

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image (or batch) of predictions; vectorised via a single bincount."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(
                f"prediction shape {pred.shape} does not match ground-truth shape {gt.shape}"
            )
        c = self.num_classes
        # int64 so the combined index cannot overflow narrow label dtypes like uint8.
        g = gt.reshape(-1).astype(np.int64, copy=False)
        p = pred.reshape(-1).astype(np.int64, copy=False)
        valid = (g >= 0) & (g < c) & (g != self.ignore_index)
        g = g[valid]
        p = p[valid]
        abstain = (p < 0) | (p >= c) | (p == self.ignore_index)
        p = np.where(abstain, c, p)
        counts = np.bincount(g * (c + 1) + p, minlength=c * (c + 1))
        self._mat += counts.reshape(c, c + 1)

    @classmethod
    def from_counts(cls, counts: np.ndarray, ignore_index: int = IGNORE_INDEX) -> ConfusionMatrix:
        """Rebuild a matrix from its (C, C + 1) counts, e.g. after a cross-process sum."""
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 2 or counts.shape[1] != counts.shape[0] + 1:
            raise ValueError(f"counts must have shape (C, C + 1), got {counts.shape}")
        cm = cls(counts.shape[0], ignore_index)
        cm._mat = counts.copy()
        return cm

    def _check_compatible(self, other: ConfusionMatrix) -> None:
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"cannot merge ConfusionMatrix with {type(other).__name__}")
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge matrices with (num_classes, ignore_index) "
                f"({self.num_classes}, {self.ignore_index}) and "
                f"({other.num_classes}, {other.ignore_index})"
            )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts in place (e.g. from a parallel worker); returns self."""
        self._check_compatible(other)
        self._mat += other._mat
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={int(self._mat.sum())})"
        )


def _pct(num: float, den: float) -> float:
    """num / den in percent, NaN when the denominator is zero."""
    return 100.0 * num / den if den > 0 else math.nan


def _json(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _check_names(cm: ConfusionMatrix, class_names: list[str]) -> None:
    if len(class_names) != cm.num_classes:
        raise ValueError(
            f"got {len(class_names)} class names for a {cm.num_classes}-class confusion matrix"
        )


def compute_metrics(cm: ConfusionMatrix, class_names: list[str]) -> dict[str, Any]:
    """Summarise a confusion matrix as a JSON-able dict (percentages, None = undefined).

    IoU_c = TP / (TP + FP + FN), where FN includes abstentions on gt class c.
    Classes absent from both gt and prediction are undefined and left out of
    the means; a class predicted but absent from gt has IoU 0 and is counted.
    """
    _check_names(cm, class_names)
    mat = cm.matrix
    c = cm.num_classes
    tp = np.diag(mat[:, :c]).astype(np.float64)
    gt_pixels = mat.sum(axis=1)  # includes the abstention column
    pred_pixels = mat[:, :c].sum(axis=0)
    fn = gt_pixels - tp
    fp = pred_pixels - tp
    total = int(gt_pixels.sum())
    abstained = int(mat[:, c].sum())

    ious = np.array([_pct(tp[i], tp[i] + fp[i] + fn[i]) for i in range(c)])
    recalls = np.array([_pct(tp[i], gt_pixels[i]) for i in range(c)])
    precisions = np.array([_pct(tp[i], pred_pixels[i]) for i in range(c)])

    per_class = [
        {
            "id": i,
            "name": class_names[i],
            "iou": _json(ious[i]),
            "precision": _json(precisions[i]),
            "recall": _json(recalls[i]),
            "gt_pixels": int(gt_pixels[i]),
            "pred_pixels": int(pred_pixels[i]),
        }
        for i in range(c)
    ]

    defined = ~np.isnan(ious)
    miou = float(ious[defined].mean()) if defined.any() else None
    in_gt = gt_pixels > 0
    mean_acc = float(recalls[in_gt].mean()) if in_gt.any() else None
    if total > 0:
        freq = gt_pixels / total
        fw_iou: float | None = float((freq[in_gt] * ious[in_gt]).sum())
    else:
        fw_iou = None

    return {
        "miou": miou,
        "per_class": per_class,
        "pixel_accuracy": _json(_pct(float(tp.sum()), total)),
        "mean_accuracy": mean_acc,
        "coverage": _json(_pct(total - abstained, total)),
        "num_classes_evaluated": int(defined.sum()),
        "frequency_weighted_iou": fw_iou,
        "valid_pixels": total,
        "unlabelled_pixels": abstained,
    }


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


class TableData(NamedTuple):
    """A table as plain strings, so the library decides the content and the caller
    (``Reporter.table``, a notebook, a log file) decides how it looks."""

    title: str
    columns: list[str]
    rows: list[list[str]]

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        """Aligned plain text: the first column left, the others right."""
        grid = [self.columns, *self.rows]
        widths = [max(len(row[i]) for row in grid) for i in range(len(self.columns))]
        lines = [self.title]
        for row in grid:
            cells = [cell.ljust(w) if i == 0 else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)


def format_table(metrics: dict[str, Any]) -> TableData:
    """Per-class scores with a closing summary row, for console reports."""
    rows = [[str(row["name"]), _fmt(row["iou"]), _fmt(row["precision"]), _fmt(row["recall"]),
             f"{row['gt_pixels']:,}"] for row in metrics["per_class"]]
    valid = metrics.get("valid_pixels", sum(r["gt_pixels"] for r in metrics["per_class"]))
    rows.append(["mIoU / pixel acc / coverage", _fmt(metrics.get("miou")),
                 f"acc {_fmt(metrics.get('pixel_accuracy'))}",
                 f"cov {_fmt(metrics.get('coverage'))}", f"{valid:,}"])
    return TableData("Pseudo-label evaluation",
                     ["Class", "IoU", "Precision", "Recall", "GT pixels"], rows)


def write_confusion_csv(path: str | Path, cm: ConfusionMatrix, class_names: list[str]) -> None:
    """Write the raw counts so confusions can be inspected in a spreadsheet."""
    _check_names(cm, class_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["gt\\pred", *class_names, UNLABELLED])
        for name, row in zip(class_names, cm.matrix, strict=True):
            writer.writerow([name, *(int(v) for v in row)])


CONFUSION_ADVICE = ("fix these with synonyms or prompts in a YAML class spec, or more labelled "
                    "images of those classes")


def unnamed_classes(metrics: dict[str, Any], max_recall: float = 5.0) -> list[str]:
    """Classes present in the ground truth that the labeller almost never names.

    Such a class is usually one the namer has no concept for (ConSE's ImageNet
    vocabulary has no "person"); synonyms rarely help there, labelled examples
    do, so the audit says so instead of suggesting prompts.
    """
    return [row["name"] for row in metrics["per_class"]
            if row["gt_pixels"] > 0 and row["recall"] is not None
            and row["recall"] < max_recall]


def unnamed_advice(names: list[str]) -> str:
    return (f"almost never labelled (recall under 5 %): {', '.join(names)}. The namer may have "
            "no concept for these; synonyms rarely fix that, few-shot naming does "
            "(`zsplg calibrate --mode auto` on labelled images).")


def format_floors(floors: list[dict[str, Any]]) -> TableData:
    """Scores of the pixels labelled at least this sure, and how many those are."""
    rows = []
    for row in floors:
        precisions = [c["precision"] for c in row["per_class"] if c["precision"] is not None]
        rows.append([f"{row['floor']:g}", _fmt(row["kept"]), _fmt(row["miou"]),
                     _fmt(row["pixel_accuracy"]), _fmt(min(precisions) if precisions else None)])
    return TableData("only pixels at least this confident",
                     ["confidence >=", "kept % of gt", "mIoU", "pixel acc", "lowest precision"],
                     rows)


def format_confusions(confusions: list[dict[str, Any]], title: str) -> TableData:
    """The audit: which ground-truth class is labelled as which, most often."""
    rows = [[str(item["gt"]), str(item["pred"]), f"{item['pixels']:,}",
             f"{item['share_of_gt']:.1f}"] for item in confusions]
    return TableData(title, ["ground truth", "labelled as", "pixels", "% of gt class"], rows)


def top_confusions(
    cm: ConfusionMatrix,
    class_names: list[str],
    k: int = 5,
    include_unlabelled: bool = False,
) -> list[dict[str, Any]]:
    """The k largest off-diagonal (gt, pred) counts: where the labeller goes wrong most.

    ``share_of_gt`` is the percent of that gt class's valid pixels. Abstentions
    ("unlabelled" column) are only considered when ``include_unlabelled``.
    Ties are broken by (gt id, pred id) so the output is deterministic.
    """
    _check_names(cm, class_names)
    c = cm.num_classes
    mat = cm.matrix if include_unlabelled else cm.matrix[:, :c]
    off = mat.copy()
    np.fill_diagonal(off, 0)
    gts, preds = np.nonzero(off)
    counts = off[gts, preds]
    order = np.lexsort((preds, gts, -counts))[: max(k, 0)]
    row_sums = cm.matrix.sum(axis=1)
    names = [*class_names, UNLABELLED]
    return [
        {
            "gt": class_names[gts[j]],
            "pred": names[preds[j]],
            "gt_id": int(gts[j]),
            "pred_id": int(preds[j]),
            "pixels": int(counts[j]),
            "share_of_gt": 100.0 * float(counts[j]) / float(row_sums[gts[j]]),
        }
        for j in order
    ]
