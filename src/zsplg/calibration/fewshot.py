"""Few-shot naming: a small logistic head on any backend's mask-pooled features.

Zero-shot naming only knows the class names. Semi-supervised segmentation
always comes with some labelled images, and their ground truth says exactly
which pooled features belong to which class. A multinomial logistic head
fitted on those features (masks whose pixels mostly belong to one class, plus
the mean feature of every ground-truth class region) names masks with the
user's own definition of each class, e.g. CamVid's "pavement" or "sign
symbol", which no ImageNet label and no prompt describes well.

The head only needs features, never text, so it works with every backend's
`encode_image` output: CLIP/GEM patch tokens, ConSE's EfficientNet features or
any ImageNet backbone's. When the backend also names masks zero-shot, the two
are fused log-linearly (`fuse_log_scores`): a weighted sum of log-probabilities
plus one offset per class, the weight and offsets chosen by calibration
(`zsplg.calibration.search`) on held-out labelled images.

`CalibratedModel` wraps a backend so that `zsplg label` uses head, weight and
offsets through the unchanged annotator.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from zsplg.vl.base import DenseVisionLanguageModel

LOG_FLOOR = float(np.log(1e-6))  # log-probability floor: no column is ever fully ruled out


def _encode(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode(text: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(text.encode("ascii"))), allow_pickle=False)


class FewShotHead:
    """Multinomial logistic regression over standardised pooled features.

    Classes are the spec's ids 0 .. C-1; a class without any example keeps a
    very low bias so it is never predicted.
    """

    def __init__(self, mean: np.ndarray, scale: np.ndarray, weight: np.ndarray,
                 bias: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)
        self.weight = np.asarray(weight, dtype=np.float32)  # (C, D)
        self.bias = np.asarray(bias, dtype=np.float32)  # (C,)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, num_classes: int,
            sample_weight: np.ndarray | None = None, l2: float = 1e-3,
            max_iter: int = 200) -> FewShotHead:
        """Fit by L-BFGS on the weighted cross-entropy with an L2 penalty.

        features (M, D), labels (M,) in 0 .. num_classes-1. Sample weights are
        normalised so every class present has the same total weight: mIoU
        counts rare classes as much as common ones.
        """
        x = np.asarray(features, dtype=np.float32)
        y = np.asarray(labels, dtype=np.int64)
        if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
            raise ValueError("few-shot head: need (M, D) features and M labels, M > 0")
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError("few-shot head: labels out of range")
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        totals = np.bincount(y, weights=w, minlength=num_classes)
        w = w / np.maximum(totals[y], 1e-12)
        w = w / w.sum()
        mean = x.mean(axis=0)
        scale = x.std(axis=0) + 1e-6
        xs = torch.from_numpy((x - mean) / scale)
        yt = torch.from_numpy(y)
        wt = torch.from_numpy(w.astype(np.float32))
        present = torch.from_numpy(totals > 0)
        weight = torch.zeros((num_classes, x.shape[1]), requires_grad=True)
        bias = torch.zeros(num_classes, requires_grad=True)
        optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter,
                                      history_size=20, line_search_fn="strong_wolfe")
        absent = torch.where(present, 0.0, -30.0)

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            logits = xs @ weight.T + bias + absent
            loss = (F.cross_entropy(logits, yt, reduction="none") * wt).sum()
            loss = loss + l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimiser.step(closure)
        final_bias = (bias + absent).detach().numpy()
        return cls(mean, scale, weight.detach().numpy(), final_bias)

    def log_probs(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """(M, D) pooled features -> (M, C) log-probabilities over the spec's ids."""
        x = features.float().cpu().numpy() if isinstance(features, torch.Tensor) else features
        x = (np.asarray(x, dtype=np.float32) - self.mean) / self.scale
        logits = torch.from_numpy(x @ self.weight.T + self.bias)
        return logits.log_softmax(dim=1).numpy()

    def to_dict(self) -> dict:
        return {"kind": "logistic", "mean": _encode(self.mean), "scale": _encode(self.scale),
                "weight": _encode(self.weight), "bias": _encode(self.bias)}

    @classmethod
    def from_dict(cls, data: dict) -> FewShotHead:
        if data.get("kind") != "logistic":
            raise ValueError(f"unknown few-shot head kind {data.get('kind')!r}")
        return cls(_decode(data["mean"]), _decode(data["scale"]), _decode(data["weight"]),
                   _decode(data["bias"]))


def head_columns(head_log_probs: np.ndarray, column_ids: list[int | None]) -> np.ndarray:
    """Reorder a head's (M, C) spec-id log-probs into the annotator's columns.

    column_ids: `zsplg.labeling.painting.ScoreColumns.ids`. Its None (the "no
    class matches" column of a spec without background) is a column a head
    trained on labelled classes cannot score: it gets the floor.
    """
    out = np.full((head_log_probs.shape[0], len(column_ids)), LOG_FLOOR, dtype=np.float32)
    for column, class_id in enumerate(column_ids):
        if class_id is not None:
            out[:, column] = head_log_probs[:, class_id]
    return out


def fuse_log_scores(zero_shot_log: np.ndarray | None, few_shot_log: np.ndarray | None,
                    weight: float, offsets: np.ndarray) -> np.ndarray:
    """(M, K) column scores -> (M, K) unnormalised fused log-scores.

    log p = (1 - weight) * log p_zero_shot + weight * log p_few_shot + offsets
    (renormalise with `softmax_rows`). Either source may be absent (weight
    then 0 or 1).
    """
    reference = zero_shot_log if zero_shot_log is not None else few_shot_log
    total = np.zeros(reference.shape, dtype=np.float32)
    if zero_shot_log is not None and weight < 1.0:
        total += (1.0 - weight) * np.maximum(zero_shot_log, LOG_FLOOR)
    if few_shot_log is not None and weight > 0.0:
        total += weight * np.maximum(few_shot_log, LOG_FLOOR)
    total += np.asarray(offsets, dtype=np.float32)[None, :]
    return total


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class CalibratedModel:
    """A backend whose mask scores are recalibrated and optionally fused with a head.

    Everything but `class_probabilities` is the wrapped backend's, so masks,
    features, prompts and the annotator work unchanged.
    """

    def __init__(self, base: DenseVisionLanguageModel, column_ids: list[int | None],
                 offsets: np.ndarray, head: FewShotHead | None = None,
                 fewshot_weight: float = 0.0) -> None:
        if len(offsets) != len(column_ids):
            raise ValueError("one offset per annotator column is required")
        if head is None and fewshot_weight > 0:
            raise ValueError("a few-shot weight needs a few-shot head")
        self.base = base
        self.column_ids = list(column_ids)
        self.offsets = np.asarray(offsets, dtype=np.float32)
        self.head = head
        self.fewshot_weight = float(fewshot_weight)
        self.name = base.name
        self.default_threshold = base.default_threshold
        self.default_temperature = base.default_temperature

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        return self.base.encode_image(image)

    def encode_text(self, prompts: list[list[str]]) -> torch.Tensor:
        return self.base.encode_text(prompts)

    @torch.no_grad()
    def class_probabilities(self, pooled: torch.Tensor, text: torch.Tensor, threshold: float,
                            temperature: float) -> torch.Tensor:
        zero_shot = None
        if self.fewshot_weight < 1.0:
            probs = self.base.class_probabilities(pooled, text, threshold, temperature)
            zero_shot = np.log(np.maximum(probs.float().cpu().numpy(), 1e-30))
        few_shot = None
        if self.head is not None and self.fewshot_weight > 0.0:
            few_shot = head_columns(self.head.log_probs(pooled), self.column_ids)
        fused = fuse_log_scores(zero_shot, few_shot, self.fewshot_weight, self.offsets)
        return torch.from_numpy(softmax_rows(fused))

    def config(self) -> dict:
        return {**self.base.config(), "calibrated": True,
                "fewshot_weight": self.fewshot_weight}
