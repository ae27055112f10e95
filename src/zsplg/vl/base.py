"""The interface between dense vision-language backends and the annotator.

A backend turns an image into a coarse feature map and class prompts into
text vectors, and scores mask-pooled features against those vectors. Scoring
belongs to the backend because its best form depends on what the features
are: CLIP-like features live in the text space and are compared by cosine;
ConSE features are ImageNet evidence that is best transferred label by label.

Both share one background rule: a visual concept counts as a user class only
if its similarity to that class's text beats `threshold`; otherwise its mass
goes to background (column 0 of the returned probabilities).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class DenseVisionLanguageModel(Protocol):
    name: str
    default_threshold: float
    default_temperature: float

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """uint8 RGB (H, W, 3) -> float feature map (D, h, w), h and w coarse."""
        ...

    def encode_text(self, prompts: list[list[str]]) -> torch.Tensor:
        """One list of prompt sentences per class -> (C, E) L2-normalised vectors
        (each class's prompt ensemble averaged, then normalised)."""
        ...

    def class_probabilities(self, pooled: torch.Tensor, text: torch.Tensor, threshold: float,
                            temperature: float) -> torch.Tensor:
        """(N, D) mask-pooled features, (C, E) text -> (N, C + 1) probabilities,
        column 0 = background."""
        ...

    def config(self) -> dict:
        ...


def thresholded_softmax(similarity: torch.Tensor, threshold: float,
                        temperature: float) -> torch.Tensor:
    """(N, C) similarities -> (N, C + 1) probabilities, column 0 = background.

    Background is an implicit class whose similarity is the threshold, so
    "best similarity below the threshold" and "argmax is background" are one
    rule, and the probabilities say how clear-cut the decision was.
    """
    background = similarity.new_full((similarity.shape[0], 1), threshold)
    return torch.cat([background, similarity], dim=1).div(temperature).softmax(dim=1)
