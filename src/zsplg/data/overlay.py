"""Labels drawn over their images, the one way every command draws them
(export, predict, report, demo), in the label PNGs' palette colours."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from zsplg.data.labels import voc_colormap


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5,
            unpainted: Collection[int] = ()) -> np.ndarray:
    """An RGB image blended with its label's colours.

    ``unpainted``: class ids left as the image shows them, e.g. 255 (ignore)
    so unlabelled pixels stay visible, or background so a mostly-background
    image does not just look darker.
    """
    colours = voc_colormap()[label].astype(np.float32)
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    if unpainted:
        keep = np.isin(label, np.fromiter(unpainted, dtype=np.int64))
        mixed[keep] = image[keep]
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
