"""How often a pseudo label is right, per class and confidence, from the labelled images.

Calibration labels every labelled image with settings fitted on the other folds
(the outer loop of its nested cross-validation), so each labelled pixel carries
a held-out pseudo label, its painted confidence and its ground truth. Counting,
per (pseudo class, confidence bin), how many of those pixels are right gives a
reliability table: the estimated probability that a pseudo-labelled pixel of
that class and confidence is correct on images the labeller has not seen.
Training (the ``reliability`` enhanced-label policy) weights each pseudo-labelled
pixel by it, instead of trusting every pixel as ``replace`` does.

Sparse cells are shrunk towards their class's reliability, and a class seen
rarely towards the overall reliability (additive pseudo-counts), so a bin with
one small atom does not claim 0 or 1.
"""

from __future__ import annotations

import numpy as np

BINS = 10  # equal-width confidence bins over [0, 1]
# Shrinkage strength: this many median-sized atoms of pseudo-evidence pull a cell
# towards its class's figure (and a class towards the overall figure).
PRIOR_ATOMS = 5.0


def confidence_bins(confidence: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Bin index per confidence in [0, 1] (1.0 falls in the last bin)."""
    return np.clip((np.asarray(confidence, dtype=np.float64) * bins).astype(np.int64),
                   0, bins - 1)


def count_correct(labels: np.ndarray, confidence: np.ndarray, gt_counts: np.ndarray,
                  bins: int = BINS) -> tuple[np.ndarray, np.ndarray]:
    """(correct, total) labelled-pixel counts per (class, bin) for painted atoms.

    labels: the pseudo class per atom (ids >= num_classes, e.g. 255, abstain and
    are not counted); confidence: its painted confidence; gt_counts: (A, C)
    ground-truth pixels per class in each atom.
    """
    num_classes = gt_counts.shape[1]
    correct = np.zeros((num_classes, bins), dtype=np.float64)
    total = np.zeros((num_classes, bins), dtype=np.float64)
    labels = np.asarray(labels)
    painted = (labels >= 0) & (labels < num_classes)
    if not painted.any():
        return correct, total
    rows = np.flatnonzero(painted)
    cls = labels[rows].astype(np.int64)
    cell = confidence_bins(confidence[rows], bins)
    np.add.at(correct, (cls, cell), gt_counts[rows, cls])
    np.add.at(total, (cls, cell), gt_counts[rows].sum(axis=1))
    return correct, total


def reliability_table(correct: np.ndarray, total: np.ndarray, prior_pixels: float) -> dict:
    """The shrunk (class, bin) reliability, as stored in the calibration file."""
    overall = correct.sum() / max(total.sum(), 1.0)
    class_correct, class_total = correct.sum(axis=1), total.sum(axis=1)
    per_class = (class_correct + prior_pixels * overall) / (class_total + prior_pixels)
    table = (correct + prior_pixels * per_class[:, None]) / (total + prior_pixels)
    return {"bins": int(correct.shape[1]), "prior_pixels": round(float(prior_pixels), 1),
            "overall": round(float(overall), 4),
            "per_class": [round(float(v), 4) for v in per_class],
            "table": [[round(float(v), 4) for v in row] for row in table],
            "pixels": [[int(v) for v in row] for row in total]}


def lookup(table: dict, labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Estimated reliability per pixel (float32); 0 where the label is not a class."""
    values = np.asarray(table["table"], dtype=np.float32)
    num_classes, bins = values.shape
    labels = np.asarray(labels).astype(np.int64)
    valid = (labels >= 0) & (labels < num_classes)
    cell = confidence_bins(confidence, bins)
    out = values[np.where(valid, labels, 0), cell]
    return np.where(valid, out, 0.0).astype(np.float32)


def check_table(table: object, num_classes: int) -> str | None:
    """Why a stored table cannot be used for ``num_classes`` classes (None: usable)."""
    if not isinstance(table, dict) or "table" not in table:
        return "no reliability table"
    values = np.asarray(table["table"], dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != num_classes:
        return (f"reliability table for {values.shape[0] if values.ndim else 0} classes, "
                f"training has {num_classes}")
    if not np.all((values >= 0) & (values <= 1)):
        return "reliability values outside [0, 1]"
    return None


def confidence_as_reliability(num_classes: int, bins: int = BINS) -> dict:
    """A table that takes the labeller's own confidence as its reliability (each bin's
    centre): the fallback when no labelled images measured the pseudo labels."""
    centres = [round((b + 0.5) / bins, 4) for b in range(bins)]
    return {"bins": bins, "prior_pixels": 0.0, "overall": None, "per_class": None,
            "table": [list(centres) for _ in range(num_classes)],
            "pixels": [[0] * bins for _ in range(num_classes)]}
