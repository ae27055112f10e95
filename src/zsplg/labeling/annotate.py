"""From masks and dense features to one label per pixel.

SAM-based pooling (METHOD.md section 2): each mask's embedding is the mean of
the feature map inside it, the map being upsampled to image size first; the
mask takes the class whose text embedding is most similar, or background when
nothing is similar enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from zsplg import IGNORE_INDEX
from zsplg.labeling.painting import (
    MASK_CHUNK,
    ScoreColumns,
    paint_average,
    paint_order,
    paint_ordered,
)
from zsplg.labeling.settings import AnnotatorConfig
from zsplg.masks.base import MaskProposals
from zsplg.vl.base import DenseVisionLanguageModel


@dataclass
class Annotation:
    label: np.ndarray  # uint8 (H, W), class ids, IGNORE_INDEX where unknown
    confidence: np.ndarray  # float32 (H, W) in [0, 1]
    mask_classes: np.ndarray  # int (N,), class id per mask (IGNORE_INDEX possible)
    mask_confidence: np.ndarray  # float32 (N,)


def _without_unknown(probs: np.ndarray) -> np.ndarray:
    """Drop the background/unknown column's mass and renormalise over the classes."""
    classes = probs[:, 1:]
    total = classes.sum(axis=1, keepdims=True)
    uniform = np.full_like(classes, 1.0 / max(classes.shape[1], 1))
    renormalised = np.where(total > 0, classes / np.maximum(total, 1e-30), uniform)
    return np.concatenate([np.zeros_like(probs[:, :1]), renormalised], axis=1)


@lru_cache(maxsize=64)
def _linear_upsampling_matrix(coarse: int, fine: int) -> torch.Tensor:
    """(fine, coarse) matrix U with U @ v == 1-D bilinear upsampling of v.

    Built by upsampling the identity, so it matches F.interpolate exactly.
    """
    eye = torch.eye(coarse, dtype=torch.float32)[None]  # (1, coarse, coarse)
    return F.interpolate(eye, size=fine, mode="linear", align_corners=False)[0].T.contiguous()


def pool_masks(features: torch.Tensor, masks: np.ndarray) -> torch.Tensor:
    """Mean feature inside each mask, as if the map were upsampled to image size.

    features: (D, h, w); masks: bool (N, H, W). Returns (N, D).
    Upsampling a D-channel map to full resolution costs D*H*W memory (750 MB
    for 1000 channels at 500x375). Bilinear upsampling is linear and separable,
    U = Uy (x) Ux, so sum(mask * U f) = sum((Uy^T mask Ux) * f): we shrink the
    masks onto the coarse grid instead, exactly, and pool all of them with one
    matrix product.
    """
    d, h, w = features.shape
    n, height, width = masks.shape
    if n == 0:
        return features.new_zeros((0, d)).float().cpu()
    uy = _linear_upsampling_matrix(h, height)  # (H, h)
    ux = _linear_upsampling_matrix(w, width)  # (W, w)
    flat_features = features.reshape(d, h * w).T.float().cpu()
    pooled, area = [], []
    for start in range(0, n, MASK_CHUNK):
        m = torch.as_tensor(masks[start:start + MASK_CHUNK]).float()
        k = m.shape[0]
        coarse = (m.reshape(k * height, width) @ ux).reshape(k, height, w)
        coarse = torch.einsum("Hh,nHw->nhw", uy, coarse)  # (k, h, w) soft mask weights
        pooled.append(coarse.reshape(k, h * w) @ flat_features)
        area.append(m.reshape(k, -1).sum(dim=1).clamp_min(1.0))
    pooled, area = torch.cat(pooled), torch.cat(area)
    return pooled / area[:, None]


class Annotator:
    """Names masks with a dense vision-language model and paints a label map.

    text_embeddings: one vector per class id in class_ids (every class except
    background); background_id: the spec's background id or None.
    """

    def __init__(self, model: DenseVisionLanguageModel, text_embeddings: torch.Tensor,
                 class_ids: list[int], background_id: int | None,
                 config: AnnotatorConfig | None = None) -> None:
        if text_embeddings.shape[0] != len(class_ids):
            raise ValueError("one text embedding per class id is required")
        self.model = model
        self.text_embeddings = F.normalize(text_embeddings.float(), dim=-1)
        self.class_ids = np.asarray(class_ids, dtype=np.int64)
        self.background_id = background_id
        self.config = config or AnnotatorConfig()
        self.threshold = (model.default_threshold if self.config.background_threshold is None
                          else self.config.background_threshold)
        self.temperature = (model.default_temperature if self.config.temperature is None
                            else self.config.temperature)
        self.columns = ScoreColumns(tuple(int(i) for i in class_ids), background_id)
        self.column_to_id = self.columns.label_ids()  # column k of the probabilities -> id

    def resolved_config(self) -> dict:
        return {**self.config.to_dict(), "background_threshold": self.threshold,
                "temperature": self.temperature}

    def annotate(self, proposals: MaskProposals, features: torch.Tensor) -> Annotation:
        """Pool the (D, h, w) feature map inside every mask, name, and paint."""
        pooled = pool_masks(features, proposals.masks)
        return self.annotate_pooled(proposals, pooled)

    def annotate_pooled(self, proposals: MaskProposals, pooled: torch.Tensor) -> Annotation:
        """Name already-pooled (N, D) mask features and paint the maps."""
        uncovered_id = self.columns.uncovered_id(self.config.uncovered)
        if len(proposals) == 0:
            height, width = proposals.image_size
            return Annotation(label=np.full((height, width), uncovered_id, dtype=np.uint8),
                              confidence=np.zeros((height, width), dtype=np.float32),
                              mask_classes=np.zeros(0, dtype=np.int64),
                              mask_confidence=np.zeros(0, dtype=np.float32))
        probs = self.model.class_probabilities(pooled, self.text_embeddings, self.threshold,
                                               self.temperature).float().numpy()
        if self.columns.drops_no_class(self.config.unknown):
            probs = _without_unknown(probs)
        best = probs.argmax(axis=1)
        mask_classes = self.column_to_id[best]
        mask_confidence = probs.max(axis=1).astype(np.float32)
        if self.config.overlap == "average":
            label, confidence, covered = paint_average(proposals.masks, probs, self.column_to_id)
        else:
            order = paint_order(self.config.overlap, proposals.areas, mask_confidence)
            label, confidence, covered = paint_ordered(proposals.masks, order, mask_classes,
                                                       mask_confidence)
        # Float sums of probabilities can land a hair outside [0, 1].
        np.clip(confidence, 0.0, 1.0, out=confidence)
        if self.config.min_confidence > 0:
            label[covered & (confidence < self.config.min_confidence)] = IGNORE_INDEX
        label[~covered] = uncovered_id
        return Annotation(label=label, confidence=confidence, mask_classes=mask_classes,
                          mask_confidence=mask_confidence)
