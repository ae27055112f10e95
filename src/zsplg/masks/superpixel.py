"""Offline class-agnostic masks: multi-scale graph-based segmentation.

Felzenszwalb-Huttenlocher segmentation at several scales gives nested,
overlapping regions, the same kind of output as SAM's everything mode (small
parts and whole objects), with no weights at all. It is the fallback whenever
SAM checkpoints are absent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from skimage.segmentation import felzenszwalb
from skimage.transform import resize

from zsplg.masks.base import MaskProposals

_REFERENCE_SIDE = 512


@dataclass(frozen=True)
class SuperpixelConfig:
    """scales: Felzenszwalb `scale` values (larger, bigger regions), given for
    a 512 px long side and rescaled with the image; min_area_frac: drop
    regions smaller than this share of the image; work_side: images are
    segmented at this long side (bounded cost and memory) and masks resized
    back.

    Defaults chosen on voc2012-mini train (ConSE naming): two coarse scales at
    384 px scored higher, and ran faster, than three scales (100, 400, 1600) or
    four at 512 px; on CamVid train the settings scored alike. The figures are
    in benchmarks/README.md.
    """

    scales: tuple[float, ...] = (400.0, 1600.0)
    sigma: float = 0.8
    min_area_frac: float = 0.001
    work_side: int = 384

    def to_dict(self) -> dict:
        return asdict(self)


class SuperpixelGenerator:
    name = "superpixel"

    def __init__(self, config: SuperpixelConfig | None = None) -> None:
        self.settings = config or SuperpixelConfig()

    def config(self) -> dict:
        return {"name": self.name, **self.settings.to_dict()}

    def generate(self, image: np.ndarray) -> MaskProposals:
        height, width = image.shape[:2]
        work = _downscale(image, self.settings.work_side)
        work_area = work.shape[0] * work.shape[1]
        min_size = max(4, int(self.settings.min_area_frac * work_area))
        # Felzenszwalb's scale is in pixels of region size: keep regions the
        # same share of the image whatever its resolution.
        relative = (max(work.shape[:2]) / _REFERENCE_SIDE) ** 2
        segmentations = [
            felzenszwalb(work, scale=scale * relative, sigma=self.settings.sigma,
                         min_size=min_size)
            for scale in self.settings.scales
        ]
        masks, scores = [], []
        seen: set[bytes] = set()
        for segments in segmentations:
            homogeneity = _homogeneity(work, segments)
            for segment_id in range(int(segments.max()) + 1):
                mask = segments == segment_id
                key = np.packbits(mask).tobytes()
                if key in seen:  # the same region found at two scales
                    continue
                seen.add(key)
                masks.append(mask)
                scores.append(homogeneity[segment_id])
        if not masks:
            return MaskProposals.empty(height, width)
        stack = np.stack(masks)
        if stack.shape[1:] != (height, width):
            stack = _upscale_masks(stack, height, width)
        return MaskProposals.from_masks(stack, np.asarray(scores, dtype=np.float32))


def _downscale(image: np.ndarray, work_side: int) -> np.ndarray:
    long_side = max(image.shape[:2])
    if long_side <= work_side:
        return image
    scale = work_side / long_side
    shape = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
    return (resize(image, shape, anti_aliasing=True, preserve_range=True)).astype(np.uint8)


def _upscale_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of (N, h, w) masks; every output pixel keeps its region."""
    rows = np.minimum((np.arange(height) + 0.5) * masks.shape[1] / height, masks.shape[1] - 1)
    cols = np.minimum((np.arange(width) + 0.5) * masks.shape[2] / width, masks.shape[2] - 1)
    return masks[:, rows.astype(np.int64)][:, :, cols.astype(np.int64)]


def _homogeneity(image: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Score in (0, 1]: 1 for a flat-coloured region, lower the more it varies.

    The colour spread inside a region relative to the whole image's spread; a
    stand-in for SAM's predicted IoU so downstream filters have something to
    rank by.
    """
    flat = segments.ravel()
    count = np.bincount(flat).astype(np.float64)
    pixels = image.reshape(-1, image.shape[-1]).astype(np.float64)
    spread = np.zeros_like(count)
    for channel in range(pixels.shape[1]):
        values = pixels[:, channel]
        mean = np.bincount(flat, values) / np.maximum(count, 1)
        mean_sq = np.bincount(flat, values * values) / np.maximum(count, 1)
        spread += np.maximum(mean_sq - mean * mean, 0.0)
    global_spread = pixels.var(axis=0).sum() + 1e-6
    return (1.0 / (1.0 + spread / global_spread)).astype(np.float32)
