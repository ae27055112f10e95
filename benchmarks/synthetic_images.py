"""Natural photos at a chosen size, for benchmarks that run where ../shared is absent.

The GPU machine receives the repository only, so the speed and memory figures there
use scikit-image's bundled photos (astronaut, coffee, chelsea, ...), each cropped at a
seeded random window, flipped at random and resized so its long side is ``long_side``.
Sizes vary from image to image (aspect ratios 4:3 to 3:4), as a real folder's do,
so per-size caches and allocator reuse are exercised the way a real run exercises them.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "motorcycle")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def synthetic_images(count: int, long_side: int = 1024, seed: int = 0) -> list[np.ndarray]:
    """``count`` uint8 RGB images, long side ``long_side``, varied aspect ratios."""
    rng = random.Random(seed)
    photos = [_photo(name) for name in PHOTOS]
    images = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        aspect = rng.choice((4 / 3, 3 / 2, 1.0, 3 / 4, 16 / 9))
        crop_w = min(width, int(round(min(height * aspect, width) * rng.uniform(0.7, 1.0))))
        crop_h = min(height, max(16, int(round(crop_w / aspect))))
        top, left = rng.randint(0, height - crop_h), rng.randint(0, width - crop_w)
        crop = photo[top:top + crop_h, left:left + crop_w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        scale = long_side / max(crop.shape[:2])
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        images.append(np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(
            size, Image.BICUBIC)))
    return images


def write_synthetic_folder(folder: str | Path, count: int, long_side: int = 1024,
                           seed: int = 0) -> list[Path]:
    """Write ``count`` synthetic images as JPEGs into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(synthetic_images(count, long_side, seed)):
        path = folder / f"synthetic_{index:05d}.jpg"
        Image.fromarray(image).save(path, quality=92)
        paths.append(path)
    return paths
