"""The labelled images reduced to what calibration needs, computed once.

Calibration tries hundreds of settings (thresholds, class offsets, prompt
templates, few-shot weights). Re-running masks and features for each would
repeat the slowest part of labelling once per trial; instead every labelled
image is processed once into:

- `pooled`: each mask's mean feature (N, D), what the namer scores;
- "atoms": the image cut into the distinct sets of covering masks. Every pixel
  of an atom is covered by exactly the same masks, so under every overlap
  policy all its pixels receive the same label. An atom keeps its member masks
  and the histogram of its ground-truth classes, so a trial's confusion matrix
  is one sparse product and a bincount, without painting a single pixel;
- `region_pooled`: the mean feature inside each ground-truth class region, the
  cleanest few-shot examples.

An image has far fewer atoms than pixels (more with SAM's many overlapping
masks than with superpixels), so a trial costs a few sparse products.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from PIL import Image

from zsplg import IGNORE_INDEX
from zsplg.data.errors import InputError
from zsplg.data.images import read_image
from zsplg.data.labels import atomic_write_bytes, read_label
from zsplg.data.sources import Sample
from zsplg.labeling.annotate import pool_masks
from zsplg.labeling.painting import AtomPainter
from zsplg.masks.base import MaskGenerator, MaskProposals
from zsplg.vl.base import DenseVisionLanguageModel

_FORMAT_VERSION = 1


@dataclass
class LabelledImage:
    """One labelled image, reduced (see the module docstring)."""

    key: str
    pooled: np.ndarray  # float32 (N, D) mask-pooled features
    areas: np.ndarray  # int64 (N,) mask areas in pixels
    atom_members: sp.csr_matrix  # (A, N) 0/1: which masks cover each atom
    atom_gt: np.ndarray  # int64 (A, C) ground-truth pixel counts per class (ignore dropped)
    region_pooled: np.ndarray  # float32 (R, D) mean feature inside each gt class region
    region_class: np.ndarray  # int64 (R,) the class of each region

    @property
    def num_masks(self) -> int:
        return int(self.pooled.shape[0])

    def mask_gt(self) -> np.ndarray:
        """(N, C) ground-truth pixel counts inside each mask."""
        return np.asarray(self.atom_members.T @ self.atom_gt)


def atoms_of(masks: np.ndarray) -> tuple[np.ndarray, sp.csr_matrix]:
    """Pixels grouped by their set of covering masks.

    masks: bool (N, H, W). Returns (atom index per pixel (H*W,), (A, N) members).
    Each mask gets a random 64-bit code and a pixel's key is the wrapped sum of
    its masks' codes; with 2^64 values a collision between two of an image's
    few thousand distinct sets is negligible, and it only merges two atoms.
    """
    n = masks.shape[0]
    flat = masks.reshape(n, -1)
    codes = np.random.default_rng(0).integers(1, 2**63, size=n, dtype=np.uint64)
    keys = np.zeros(flat.shape[1], dtype=np.uint64)
    for i in range(n):
        keys[flat[i]] += codes[i]  # uint64 addition wraps around, as wanted
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    members = sp.csr_matrix(flat[:, first].T.astype(np.float32))
    return inverse.reshape(-1), members


def reduce_image(key: str, proposals: MaskProposals, features: torch.Tensor, gt: np.ndarray,
                 num_classes: int, ignore_index: int = IGNORE_INDEX) -> LabelledImage:
    """Masks + feature map + ground truth (at the masks' size) -> a LabelledImage."""
    height, width = proposals.image_size
    if gt.shape != (height, width):
        raise ValueError(f"{key}: ground truth {gt.shape} does not match masks {(height, width)}")
    atom_of_pixel, members = atoms_of(proposals.masks)
    flat_gt = gt.reshape(-1).astype(np.int64)
    valid = (flat_gt < num_classes) & (flat_gt != ignore_index)
    atom_gt = np.bincount(atom_of_pixel[valid] * num_classes + flat_gt[valid],
                          minlength=members.shape[0] * num_classes)
    atom_gt = atom_gt.reshape(members.shape[0], num_classes)
    present = [c for c in range(num_classes) if np.any(flat_gt[valid] == c)]
    regions = np.stack([gt == c for c in present]) if present else np.zeros((0, height, width),
                                                                           dtype=bool)
    region_pooled = pool_masks(features, regions).numpy().astype(np.float32)
    pooled = pool_masks(features, proposals.masks).numpy().astype(np.float32)
    return LabelledImage(key=key, pooled=pooled, areas=proposals.areas.astype(np.int64),
                         atom_members=members, atom_gt=atom_gt.astype(np.int64),
                         region_pooled=region_pooled,
                         region_class=np.asarray(present, dtype=np.int64))


def _entry_key(sample: Sample, generator: MaskGenerator, model: DenseVisionLanguageModel,
               num_classes: int, max_side: int) -> str:
    """Cache key: the image and label files' bytes plus every setting that changes the entry."""
    digest = hashlib.sha256()
    for path in (sample.image, sample.label):
        digest.update(Path(path).read_bytes())
    digest.update(json.dumps([generator.config(), model.config(), num_classes, max_side,
                              _FORMAT_VERSION], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def _save(path: Path, item: LabelledImage) -> None:
    members = item.atom_members.tocoo()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, pooled=item.pooled.astype(np.float16), areas=item.areas,
                        rows=members.row.astype(np.int32), cols=members.col.astype(np.int32),
                        shape=np.asarray(members.shape), atom_gt=item.atom_gt.astype(np.int32),
                        region_pooled=item.region_pooled, region_class=item.region_class)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def _load(path: Path, key: str) -> LabelledImage | None:
    try:
        with np.load(path) as data:
            shape = tuple(int(v) for v in data["shape"])
            rows, cols = data["rows"], data["cols"]
            members = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                                    shape=shape)
            return LabelledImage(key=key, pooled=data["pooled"].astype(np.float32),
                                 areas=data["areas"].astype(np.int64), atom_members=members,
                                 atom_gt=data["atom_gt"].astype(np.int64),
                                 region_pooled=data["region_pooled"].astype(np.float32),
                                 region_class=data["region_class"].astype(np.int64))
    except (OSError, KeyError, ValueError):
        return None  # unreadable entry: recompute it


def reduce_sample(sample: Sample, generator: MaskGenerator, model: DenseVisionLanguageModel,
                  num_classes: int, ignore_index: int, max_side: int = 1024,
                  cache_dir: Path | None = None) -> LabelledImage:
    """One labelled pair -> LabelledImage, through the on-disk cache when given.

    The image is processed at `max_side` exactly as `zsplg label` does; the
    ground truth is resized (nearest) to that size.
    """
    if sample.label is None:
        raise InputError(str(sample.image), "calibration needs a ground-truth label on every line")
    path = None
    if cache_dir is not None:
        key = _entry_key(sample, generator, model, num_classes, max_side)
        path = Path(cache_dir) / f"{key}.npz"
        if path.is_file():
            cached = _load(path, sample.key)
            if cached is not None:
                return cached
    image = read_image(sample.image, max_side=max_side)
    gt = read_label(sample.label, num_classes=num_classes, ignore_index=ignore_index)
    if gt.shape != image.shape[:2]:
        gt = np.asarray(Image.fromarray(gt).resize((image.shape[1], image.shape[0]),
                                                   Image.NEAREST))
    with torch.no_grad():
        proposals = generator.generate(image)
        features = model.encode_image(image)
    item = reduce_image(sample.key, proposals, features, gt, num_classes, ignore_index)
    if path is not None:
        try:
            _save(path, item)
            item = _load(path, sample.key) or item  # same float16 rounding as a cache hit
        except OSError:
            pass  # a read-only cache only costs time
    return item


class LabelledSet:
    """All labelled images stacked, for vectorised trials.

    Masks of all images are rows of `pooled`; `members` maps every atom of
    every image to its masks (block diagonal), so a trial's per-mask scores
    become per-atom labels with one sparse product.
    """

    def __init__(self, images: list[LabelledImage], num_classes: int) -> None:
        if not images:
            raise ValueError("no labelled images")
        self.images = images
        self.num_classes = num_classes
        self.pooled = np.concatenate([im.pooled for im in images])
        self.areas = np.concatenate([im.areas for im in images])
        self.mask_offsets = np.cumsum([0] + [im.num_masks for im in images])
        self.members = sp.block_diag([im.atom_members for im in images], format="csr",
                                     dtype=np.float32)
        self.atom_gt = np.concatenate([im.atom_gt for im in images])
        self.atom_image = np.concatenate([np.full(im.atom_gt.shape[0], i)
                                          for i, im in enumerate(images)])
        self.mask_image = np.concatenate([np.full(im.num_masks, i)
                                          for i, im in enumerate(images)])
        self.painter = AtomPainter(self.members, self.areas)

    def __len__(self) -> int:
        return len(self.images)

    def atom_labels(self, probs: np.ndarray, column_to_id: np.ndarray, overlap: str = "average",
                    uncovered_id: int = IGNORE_INDEX) -> np.ndarray:
        """(M, K) per-mask probabilities -> class id per atom, as the annotator paints."""
        return self.painter.labels(probs, column_to_id, overlap, uncovered_id)

    def atom_confidence(self, probs: np.ndarray, overlap: str = "average") -> np.ndarray:
        """(M, K) per-mask probabilities -> the confidence painted on each atom."""
        return self.painter.confidence(probs, overlap)

    def confusion(self, atom_labels: np.ndarray, atoms: np.ndarray | None = None) -> np.ndarray:
        """(C, C + 1) confusion counts (last column: abstained) over the chosen atoms."""
        c = self.num_classes
        labels = np.where((atom_labels < 0) | (atom_labels >= c), c, atom_labels)
        gt = self.atom_gt if atoms is None else self.atom_gt[atoms]
        labels = labels if atoms is None else labels[atoms]
        onehot = sp.csr_matrix((np.ones(len(labels)), (np.arange(len(labels)), labels)),
                               shape=(len(labels), c + 1))
        return np.asarray((onehot.T @ gt).T).astype(np.int64)

    def atoms_of_images(self, image_indices: np.ndarray) -> np.ndarray:
        """Boolean selector of the atoms belonging to the given images."""
        return np.isin(self.atom_image, image_indices)

    def masks_of_images(self, image_indices: np.ndarray) -> np.ndarray:
        return np.isin(self.mask_image, image_indices)


def miou_of(confusion: np.ndarray) -> float:
    """Mean IoU in percent over classes present in gt or prediction (as zsplg eval)."""
    c = confusion.shape[0]
    tp = np.diag(confusion[:, :c]).astype(np.float64)
    gt = confusion.sum(axis=1)
    pred = confusion[:, :c].sum(axis=0)
    union = gt + pred - tp
    defined = union > 0
    if not defined.any():
        return 0.0
    return float(100.0 * np.mean(tp[defined] / union[defined]))
