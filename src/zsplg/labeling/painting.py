"""How named masks become one label per pixel: the score columns and the overlap rules.

The annotator paints pixels. Calibration scores the same rules on "atoms"
(sets of pixels covered by exactly the same masks, see
`zsplg.calibration.labelled_set`), so that hundreds of trial settings need no
painting. Both take the rules from here, so a calibrated setting scores
exactly what `zsplg label` paints with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from zsplg import IGNORE_INDEX
from zsplg.data.classes import ClassSpec

# Masks handled at once: bounds the float copy of the masks (N x H x W) at 1024 px images.
MASK_CHUNK = 64


@dataclass(frozen=True)
class ScoreColumns:
    """The namer's probability columns for one class spec.

    Column 0 is background, or "no class is similar enough" when the spec has
    no background class; then one column per other class, in id order (each
    has text prompts). A calibration file stores `ids`, so offsets and a
    few-shot head fitted for other columns are refused.
    """

    class_ids: tuple[int, ...]
    background: int | None

    @classmethod
    def of(cls, spec: ClassSpec) -> ScoreColumns:
        return cls(tuple(i for i in range(spec.num_classes) if i != spec.background),
                   spec.background)

    @property
    def ids(self) -> list[int | None]:
        """The spec id of each column (None: the "no class" column)."""
        return [self.background, *self.class_ids]

    def label_ids(self) -> np.ndarray:
        """Column -> the id painted for it; "no class" is painted as ignore."""
        fallback = IGNORE_INDEX if self.background is None else self.background
        return np.asarray([fallback, *self.class_ids], dtype=np.int64)

    def uncovered_id(self, uncovered: str) -> int:
        """What a pixel no mask covers becomes under the `uncovered` policy."""
        if uncovered == "background" and self.background is not None:
            return self.background
        return IGNORE_INDEX

    def drops_no_class(self, unknown: str) -> bool:
        """unknown="best-class" without a background class: a mask always gets a class."""
        return self.background is None and unknown == "best-class"


def paint_order(overlap: str, areas: np.ndarray, mask_confidence: np.ndarray) -> np.ndarray:
    """Mask indices in painting order for an ordered policy: the last painted wins a pixel."""
    if overlap == "small-on-top":
        return np.argsort(-areas, kind="stable")
    if overlap == "large-on-top":
        return np.argsort(areas, kind="stable")
    if overlap == "confidence":
        return np.argsort(mask_confidence, kind="stable")
    raise ValueError(f"{overlap!r} is not an ordered overlap policy")


def paint_ordered(masks: np.ndarray, order: np.ndarray, mask_labels: np.ndarray,
                  mask_confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint bool (N, H, W) masks in `order`: (label, confidence, covered) maps."""
    _, height, width = masks.shape
    label = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
    confidence = np.zeros((height, width), dtype=np.float32)
    covered = np.zeros((height, width), dtype=bool)
    for index in order:  # one vectorised assignment per mask
        mask = masks[index]
        label[mask] = mask_labels[index]
        confidence[mask] = mask_confidence[index]
        covered |= mask
    return label, confidence, covered


def paint_average(masks: np.ndarray, probs: np.ndarray,
                  label_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each pixel takes the mean column distribution of the masks covering it.

    masks: bool (N, H, W); probs: (N, K) column probabilities; label_ids: the
    id painted for each column. Returns (label, confidence, covered) maps.
    """
    n, height, width = masks.shape
    summed = torch.zeros((probs.shape[1], height * width))
    counts = torch.zeros(height * width)
    for start in range(0, n, MASK_CHUNK):
        chunk = masks[start:start + MASK_CHUNK]
        flat = torch.from_numpy(chunk.reshape(-1, height * width)).float()
        summed += torch.from_numpy(probs[start:start + MASK_CHUNK]).float().T @ flat
        counts += flat.sum(dim=0)
    covered = (counts > 0).numpy().reshape(height, width)
    mean = summed / counts.clamp_min(1.0)
    confidence, column = mean.max(dim=0)
    label = label_ids[column.numpy()].astype(np.uint8).reshape(height, width)
    label[~covered] = IGNORE_INDEX
    confidence = confidence.numpy().reshape(height, width).astype(np.float32)
    confidence[~covered] = 0.0
    return label, confidence, covered


class AtomPainter:
    """The overlap rules applied to atoms instead of pixels.

    members: (A, M) 0/1, the masks covering each atom; areas: (M,) mask areas
    in pixels. All pixels of an atom are covered by the same masks, so under
    every policy they all get the label computed here for the atom.
    """

    def __init__(self, members: sp.csr_matrix, areas: np.ndarray) -> None:
        self.members = members.tocsr()
        self.areas = areas
        self.covered = np.asarray(self.members.sum(axis=1)).reshape(-1) > 0
        self._winners: dict[str, np.ndarray] = {}

    def winners(self, overlap: str, mask_confidence: np.ndarray | None = None) -> np.ndarray:
        """Per atom, the covering mask an ordered policy paints last (-1: none covers it).

        The area orders do not depend on the scores, so they are computed once.
        """
        if overlap != "confidence" and overlap in self._winners:
            return self._winners[overlap]
        order = paint_order(overlap, self.areas, mask_confidence)
        rank = np.empty(len(order), dtype=np.float64)
        rank[order] = np.arange(len(order)) + 1.0
        weighted = self.members.multiply(rank[None, :]).tocsr()
        top = np.asarray(weighted.argmax(axis=1)).reshape(-1)
        top[~self.covered] = -1
        if overlap != "confidence":
            self._winners[overlap] = top
        return top

    def labels(self, probs: np.ndarray, label_ids: np.ndarray, overlap: str,
               uncovered_id: int) -> np.ndarray:
        """(M, K) per-mask column probabilities -> the id painted on each atom."""
        if overlap == "average":
            column = np.asarray(self.members @ probs).argmax(axis=1)
        else:
            top = self.winners(overlap, probs.max(axis=1))
            column = probs.argmax(axis=1)[np.maximum(top, 0)]
        labels = label_ids[column]
        labels[~self.covered] = uncovered_id
        return labels

    def confidence(self, probs: np.ndarray, overlap: str) -> np.ndarray:
        """(M, K) per-mask column probabilities -> the confidence painted on each atom
        (what `zsplg label` writes to its confidence maps; 0 where no mask covers it)."""
        if overlap == "average":
            counts = np.asarray(self.members.sum(axis=1)).reshape(-1)
            mean = np.asarray(self.members @ probs) / np.maximum(counts, 1.0)[:, None]
            out = mean.max(axis=1)
        else:
            top = self.winners(overlap, probs.max(axis=1))
            out = probs.max(axis=1)[np.maximum(top, 0)]
        return np.where(self.covered, np.clip(out, 0.0, 1.0), 0.0)
