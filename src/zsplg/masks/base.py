"""The one structure every class-agnostic mask generator returns.

SAM's everything mode and the offline superpixel generator both produce a set
of binary, possibly overlapping masks with a quality score each. Keeping them
in one dataclass is what lets the annotator stay ignorant of where masks came
from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class MaskProposals:
    """N binary masks over an H x W image.

    masks:  bool array (N, H, W)
    scores: float32 array (N,), higher is better (SAM: predicted IoU)
    areas:  int64 array (N,), pixel count of each mask
    """

    masks: np.ndarray
    scores: np.ndarray
    areas: np.ndarray

    def __post_init__(self) -> None:
        if self.masks.ndim != 3 or self.masks.dtype != np.bool_:
            raise ValueError(f"masks must be a bool (N, H, W) array, got {self.masks.dtype} "
                             f"{self.masks.shape}")
        n = self.masks.shape[0]
        if self.scores.shape != (n,) or self.areas.shape != (n,):
            raise ValueError("scores and areas must have one entry per mask")

    @classmethod
    def from_masks(cls, masks: np.ndarray, scores: np.ndarray | None = None) -> MaskProposals:
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim == 2:
            masks = masks[None]
        n = masks.shape[0]
        if scores is None:
            scores = np.ones(n, dtype=np.float32)
        areas = masks.reshape(n, -1).sum(axis=1).astype(np.int64)
        return cls(masks=masks, scores=np.asarray(scores, dtype=np.float32), areas=areas)

    @classmethod
    def empty(cls, height: int, width: int) -> MaskProposals:
        return cls(
            masks=np.zeros((0, height, width), dtype=bool),
            scores=np.zeros(0, dtype=np.float32),
            areas=np.zeros(0, dtype=np.int64),
        )

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def subset(self, keep: np.ndarray) -> MaskProposals:
        return MaskProposals(self.masks[keep], self.scores[keep], self.areas[keep])


class MaskGenerator(Protocol):
    """Anything that cuts an RGB image into class-agnostic masks."""

    name: str

    def generate(self, image: np.ndarray) -> MaskProposals:
        """image: uint8 RGB array (H, W, 3)."""
        ...

    def config(self) -> dict:
        """Settings that change the output; used for run.json and cache keys."""
        ...
