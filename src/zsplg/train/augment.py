"""UniMatch's training transforms, with every random decision drawn from a given Generator.

The reference (LiheYoung/UniMatch dataset/transform.py, semi.py) draws from
Python's and numpy's global RNGs, so a resumed run, or the same run with a
different number of loader workers, sees different crops. Here each function
takes an explicit `numpy.random.Generator` and draws a fixed sequence from it;
the datasets seed one per item from (seed, epoch, index).

Weak (labelled and unlabelled): rescale so the long side is a random integer
in [L * lo, L * hi] (UniMatch: 0.5-2.0), random crop to crop_size x crop_size
(image padded with 0, masks with 255, padding also returned as its own
boolean map), horizontal flip p 0.5.
Strong (unlabelled only, on the weak crop): colour jitter (brightness,
contrast, saturation 0.5, hue 0.25, random order as torchvision's ColorJitter)
p 0.8, grayscale p 0.2, Gaussian blur with sigma in [0.1, 2.0] p 0.5.
CutMix box (obtain_cutmix_box): p 0.5, area 2-40 % of the crop, aspect 0.3-1/0.3.

Rescale and crop are done in one PIL resize of just the source region that
lands in the crop (`resize(box=...)`), and masks by indexing the source pixel
under each crop pixel's centre: the same pixels as resizing the whole image
and then cropping, at the cost of the crop instead of up to 4x the image.
(A nearest-neighbour tie, a pixel centre exactly on a source pixel border,
may go the other way than in PIL; bilinear values may differ by PIL's
rounding.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF  # noqa: N812
from PIL import Image, ImageFilter

from zsplg import IGNORE_INDEX

IMAGENET_MEAN = np.array((0.485, 0.456, 0.406), dtype=np.float32)
IMAGENET_STD = np.array((0.229, 0.224, 0.225), dtype=np.float32)
IGNORE = IGNORE_INDEX


def _rescaled_size(width: int, height: int, rng: np.random.Generator,
                   scale_range: tuple[float, float]) -> tuple[int, int]:
    """UniMatch's resize(): long side uniform over the integers in [L * lo, L * hi]."""
    long = max(width, height)
    low = max(1, int(long * scale_range[0]))
    high = max(low, int(long * scale_range[1]))
    side = int(rng.integers(low, high, endpoint=True))
    if height > width:
        return max(1, int(width * side / height + 0.5)), side
    return side, max(1, int(height * side / width + 0.5))


def _nearest_index(start: int, stop: int, scale: float, limit: int) -> np.ndarray:
    """Source index under each output pixel centre in [start, stop): floor((i + 0.5) * scale)."""
    index = np.floor((np.arange(start, stop) + 0.5) * scale).astype(np.intp)
    return np.minimum(index, limit - 1)


def weak_augment(image: Image.Image, masks: Sequence[np.ndarray], rng: np.random.Generator,
                 crop_size: int, scale_range: tuple[float, float] = (0.5, 2.0),
                 flip_p: float = 0.5, mask_fill: int = IGNORE,
                 ) -> tuple[Image.Image, list[np.ndarray], np.ndarray]:
    """Rescale, crop (pad right/bottom if needed), flip; the same geometry for every mask.

    masks: (H, W) index arrays of the image's size (labels, pseudo labels),
    resampled with nearest neighbour (exact pixel-centre mapping, the same
    one the bilinear image resize uses) and padded with `mask_fill`. Returns
    the RGB crop, the uint8 mask crops, and a (crop_size, crop_size) bool map
    that is True on padding. Draws: long side, crop x, crop y, flip.
    """
    width, height = image.size
    for mask in masks:
        if mask.shape[:2] != (height, width):
            raise ValueError(f"mask shape {mask.shape} differs from image size {height}x{width}")
    new_w, new_h = _rescaled_size(width, height, rng, scale_range)
    x = int(rng.integers(0, max(new_w, crop_size) - crop_size, endpoint=True))
    y = int(rng.integers(0, max(new_h, crop_size) - crop_size, endpoint=True))
    flip = bool(rng.random() < flip_p)

    # The part of the rescaled image inside the crop, in rescaled and in source coordinates.
    x1, y1 = min(x + crop_size, new_w), min(y + crop_size, new_h)
    sx, sy = width / new_w, height / new_h
    region = image.convert("RGB").resize((x1 - x, y1 - y), Image.Resampling.BILINEAR,
                                         box=(x * sx, y * sy, x1 * sx, y1 * sy))
    out_image = Image.new("RGB", (crop_size, crop_size), (0, 0, 0))
    out_image.paste(region, (0, 0))
    rows = _nearest_index(y, y1, sy, height)
    cols = _nearest_index(x, x1, sx, width)
    out_masks = []
    for mask in masks:
        crop = np.full((crop_size, crop_size), mask_fill, dtype=np.uint8)
        crop[: y1 - y, : x1 - x] = mask[rows[:, None], cols[None, :]]
        out_masks.append(crop)
    padding = np.ones((crop_size, crop_size), dtype=bool)
    padding[: y1 - y, : x1 - x] = False
    if flip:
        out_image = out_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out_masks = [np.ascontiguousarray(m[:, ::-1]) for m in out_masks]
        padding = np.ascontiguousarray(padding[:, ::-1])
    return out_image, out_masks, padding


def colour_jitter(image: Image.Image, rng: np.random.Generator, brightness: float = 0.5,
                  contrast: float = 0.5, saturation: float = 0.5, hue: float = 0.25
                  ) -> Image.Image:
    """torchvision ColorJitter(b, c, s, h) with its parameters drawn from `rng`.

    Draws: the order of the four adjustments, then the four factors.
    """
    order = rng.permutation(4)
    factors = (
        rng.uniform(1 - brightness, 1 + brightness),
        rng.uniform(1 - contrast, 1 + contrast),
        rng.uniform(1 - saturation, 1 + saturation),
        rng.uniform(-hue, hue),
    )
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in order:
        image = adjust[i](image, float(factors[i]))
    return image


def strong_augment(image: Image.Image, rng: np.random.Generator, jitter_p: float = 0.8,
                   grayscale_p: float = 0.2, blur_p: float = 0.5,
                   blur_sigma: tuple[float, float] = (0.1, 2.0)) -> Image.Image:
    """UniMatch's strong colour view: jitter p 0.8, grayscale p 0.2, Gaussian blur p 0.5."""
    if rng.random() < jitter_p:
        image = colour_jitter(image, rng)
    if rng.random() < grayscale_p:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    if rng.random() < blur_p:
        sigma = float(rng.uniform(*blur_sigma))
        image = image.filter(ImageFilter.GaussianBlur(radius=sigma))  # PIL radius = sigma
    return image


def cutmix_box(size: int, rng: np.random.Generator, p: float = 0.5,
               area: tuple[float, float] = (0.02, 0.4),
               ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> np.ndarray:
    """UniMatch's obtain_cutmix_box: a (size, size) uint8 map, 1 inside one random box.

    With probability 1 - p the map is all 0. The box's area is a fraction
    in `area` of the crop; aspect ratio and position are redrawn until the
    box fits inside the crop.
    """
    box = np.zeros((size, size), dtype=np.uint8)
    if rng.random() > p:
        return box
    target = rng.uniform(*area) * size * size
    while True:
        aspect = rng.uniform(*ratio)
        w = int(np.sqrt(target / aspect))
        h = int(np.sqrt(target * aspect))
        x = int(rng.integers(0, size))
        y = int(rng.integers(0, size))
        if x + w <= size and y + h <= size:
            break
    box[y:y + h, x:x + w] = 1
    return box


def normalise(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float (3, H, W), ImageNet mean/std (every backbone's input)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    arr = (arr - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def mask_tensor(mask: Image.Image | np.ndarray) -> torch.Tensor:
    """Index map -> LongTensor (H, W) (palette images are read as indices)."""
    return torch.from_numpy(np.array(mask, dtype=np.int64))
