"""The interface between dense vision-language backends and the annotator.

A backend turns an image into a coarse feature map and class names into
text-space vectors. Features are pooled inside each mask *before* they are
mapped into the text space, because some backends (ConSE) map non-linearly:
classifying the pooled region is far more reliable than averaging per-pixel
guesses. For CLIP-like backends whose features already live in the joint space
the mapping is the identity.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class DenseVisionLanguageModel(Protocol):
    name: str

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """uint8 RGB (H, W, 3) -> float feature map (D, h, w), h and w coarse."""
        ...

    def to_text_space(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, D) pooled features -> (N, E) vectors comparable to encode_text."""
        ...

    def encode_text(self, prompts: list[list[str]]) -> torch.Tensor:
        """One list of prompt strings per class -> (C, E) L2-normalised vectors
        (the prompt ensemble of each class averaged, then normalised)."""
        ...

    def config(self) -> dict:
        ...
