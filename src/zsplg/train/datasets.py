"""Training and validation datasets over zsplg.data.sources.Sample lists.

Each item's transforms draw from `np.random.default_rng([seed, epoch, index])`,
so an item is a pure function of (seed, epoch, index): the same whatever the
number of loader workers or the order they run in, and the same after a
resume (the loop calls `set_epoch` before each epoch, as with a
DistributedSampler).

Unlabelled images need no mask files (UniMatch's loader wants fake ones): the
padding is tracked in `ignore_mask`, and the zero-shot pseudo label that
`zsplg label` wrote for the image (OUT/labels/<key>.png) is cropped with the
same geometry as the weak view.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from zsplg.calibration.reliability import lookup
from zsplg.data.errors import InputError
from zsplg.data.images import read_image
from zsplg.data.labels import read_label
from zsplg.data.run_folder import CONFIDENCE
from zsplg.data.sources import Sample
from zsplg.train.augment import (
    IGNORE,
    cutmix_box,
    mask_tensor,
    normalise,
    strong_augment,
    weak_augment,
)

RELIABILITY_STEPS = 254  # uint8 levels of a reliability map (255 is the padding fill)


def _read_pair(image_path: Path, label_path: Path, num_classes: int | None,
               ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) and its label (H, W); a size mismatch names both files."""
    image = read_image(image_path)
    label = read_label(label_path, num_classes=num_classes, ignore_index=ignore_index)
    if label.shape != image.shape[:2]:
        raise InputError(
            label_path,
            f"label size {label.shape[0]}x{label.shape[1]} (HxW) does not match image "
            f"{image_path} size {image.shape[0]}x{image.shape[1]}",
        )
    return image, label


class _EpochSeeded(Dataset):
    """Per-item generators from (seed, epoch, index)."""

    def __init__(self, samples: Sequence[Sample], seed: int) -> None:
        self.samples = list(samples)
        if not self.samples:
            raise ValueError(f"{type(self).__name__}: no samples")
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random crops the next items use."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __len__(self) -> int:
        return len(self.samples)


def _check_geometry(crop_size: int, scale_range: tuple[float, float]
                    ) -> tuple[int, tuple[float, float]]:
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if int(crop_size) < 1:
        raise ValueError(f"crop_size must be >= 1, got {crop_size}")
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    return int(crop_size), (lo, hi)


def _require_labels(samples: Sequence[Sample], what: str) -> None:
    for sample in samples:
        if sample.label is None:
            raise InputError(sample.image, f"no label file given ({what} needs image-label pairs)")


class LabelledDataset(_EpochSeeded):
    """Weak-augmented (image, mask) crops of labelled samples.

    Returns image float (3, S, S) ImageNet-normalised, mask long (S, S) with
    `ignore_index` at padding and wherever the label says so. With
    num_classes, label values >= num_classes other than ignore_index raise
    InputError naming the label file.
    """

    def __init__(self, samples: Sequence[Sample], crop_size: int,
                 scale_range: tuple[float, float] = (0.5, 2.0), seed: int = 0,
                 ignore_index: int = IGNORE, num_classes: int | None = None) -> None:
        super().__init__(samples, seed)
        _require_labels(self.samples, "labelled training data")
        self.crop_size, self.scale_range = _check_geometry(crop_size, scale_range)
        self.ignore_index = ignore_index
        self.num_classes = num_classes

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        assert sample.label is not None
        image, label = _read_pair(sample.image, sample.label, self.num_classes, self.ignore_index)
        crop, (mask,), _ = weak_augment(Image.fromarray(image), [label],
                                        self.rng(index), self.crop_size, self.scale_range,
                                        mask_fill=self.ignore_index)
        return normalise(crop), mask_tensor(mask)


class UnlabelledDataset(_EpochSeeded):
    """UniMatch's unlabelled item: a weak view, two strong views, CutMix boxes, pseudo label.

    Dict keys: img_w, img_s1, img_s2 (float 3xSxS), ignore_mask (long SxS:
    255 at padding, else 0), cutmix_box1, cutmix_box2 (long SxS 0/1), pseudo
    (long SxS: the pseudo label under img_w's geometry, 255 at padding; all
    255 when there is no pseudo_label_dir or no file for this sample),
    pseudo_weight (float SxS: the estimated reliability of each pseudo-labelled
    pixel from ``reliability``, a table of ``zsplg.calibration.reliability``, looked
    up by class and the label run's confidence; all ones without a table).
    Samples need no label file. A pseudo label whose size differs from its
    image raises InputError naming both files; with num_classes, one with
    values >= num_classes (other than 255) raises InputError naming it.
    """

    def __init__(self, samples: Sequence[Sample], crop_size: int,
                 pseudo_label_dir: str | PathLike[str] | None = None,
                 scale_range: tuple[float, float] = (0.5, 2.0), seed: int = 0,
                 num_classes: int | None = None, min_confidence: float = 0.0,
                 reliability: dict | None = None) -> None:
        super().__init__(samples, seed)
        self.crop_size, self.scale_range = _check_geometry(crop_size, scale_range)
        self.pseudo_label_dir = None if pseudo_label_dir is None else Path(pseudo_label_dir)
        if self.pseudo_label_dir is not None and not self.pseudo_label_dir.is_dir():
            raise InputError(self.pseudo_label_dir, "pseudo-label folder not found")
        self.num_classes = num_classes
        self.min_confidence = float(min_confidence)
        self.reliability = reliability if self.pseudo_label_dir is not None else None
        self.confidence_dir = None
        if ((self.min_confidence > 0 or self.reliability is not None)
                and self.pseudo_label_dir is not None):
            # `zsplg label` writes OUT/labels/KEY.png and OUT/confidence/KEY.png
            self.confidence_dir = self.pseudo_label_dir.parent / CONFIDENCE
            if not self.confidence_dir.is_dir():
                raise InputError(self.confidence_dir, "confidence maps not found: a minimum "
                                 "pseudo-label confidence or the reliability policy needs "
                                 "the confidence/ folder that `zsplg label` writes beside "
                                 "labels/")

    def pseudo_label_path(self, sample: Sample) -> Path | None:
        """Where `zsplg label` wrote this sample's label (labels/<key>.png), if it exists."""
        if self.pseudo_label_dir is None:
            return None
        path = self.pseudo_label_dir / f"{sample.key}.png"
        return path if path.is_file() else None

    def _confidence(self, pseudo: np.ndarray, sample: Sample) -> np.ndarray:
        """The label run's confidence map for this sample, in [0, 1]."""
        assert self.confidence_dir is not None
        path = self.confidence_dir / f"{sample.key}.png"
        try:
            with Image.open(path) as handle:
                confidence = np.asarray(handle.convert("L"))
        except (OSError, ValueError) as exc:
            raise InputError(path, f"unreadable confidence map ({exc})") from None
        if confidence.shape != pseudo.shape:
            raise InputError(path, f"confidence map size {confidence.shape[0]}x"
                                   f"{confidence.shape[1]} does not match its pseudo label's "
                                   f"{pseudo.shape[0]}x{pseudo.shape[1]}")
        # the maps hold round(confidence * 255)
        return confidence / 255.0

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        pseudo_path = self.pseudo_label_path(sample)
        if pseudo_path is None:
            image = read_image(sample.image)
            pseudo = np.full(image.shape[:2], IGNORE, dtype=np.uint8)
        else:
            image, pseudo = _read_pair(sample.image, pseudo_path, self.num_classes, IGNORE)
        # reliability in 1/254 steps rides through the geometry as a second mask
        reliable = np.full(pseudo.shape, RELIABILITY_STEPS, dtype=np.uint8)
        if pseudo_path is not None and self.confidence_dir is not None:
            confidence = self._confidence(pseudo, sample)
            if self.min_confidence > 0:  # below it, the pixel is the teacher's
                pseudo = np.where(confidence < self.min_confidence, IGNORE,
                                  pseudo).astype(np.uint8)
            if self.reliability is not None:
                reliable = np.rint(lookup(self.reliability, pseudo, confidence)
                                   * RELIABILITY_STEPS).astype(np.uint8)
        rng = self.rng(index)
        weak, (pseudo_crop, reliable_crop), padding = weak_augment(
            Image.fromarray(image), [pseudo, reliable], rng, self.crop_size,
            self.scale_range)
        strong1 = strong_augment(weak, rng)
        box1 = cutmix_box(self.crop_size, rng)
        strong2 = strong_augment(weak, rng)
        box2 = cutmix_box(self.crop_size, rng)
        ignore = np.where(padding, IGNORE, 0)
        return {
            "img_w": normalise(weak),
            "img_s1": normalise(strong1),
            "img_s2": normalise(strong2),
            "ignore_mask": mask_tensor(ignore),
            "cutmix_box1": mask_tensor(box1),
            "cutmix_box2": mask_tensor(box2),
            "pseudo": mask_tensor(pseudo_crop),
            "pseudo_weight": torch.from_numpy(
                np.minimum(reliable_crop, RELIABILITY_STEPS).astype(np.float32)
                / RELIABILITY_STEPS),
        }


class ValDataset(_EpochSeeded):
    """Whole validation images: (image float 3xHxW normalised, mask long HxW, key)."""

    def __init__(self, samples: Sequence[Sample], ignore_index: int = IGNORE,
                 num_classes: int | None = None) -> None:
        super().__init__(samples, seed=0)
        _require_labels(self.samples, "validation")
        self.ignore_index = ignore_index
        self.num_classes = num_classes

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        sample = self.samples[index]
        assert sample.label is not None
        image, label = _read_pair(sample.image, sample.label, self.num_classes, self.ignore_index)
        return normalise(Image.fromarray(image)), mask_tensor(label), sample.key
