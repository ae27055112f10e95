"""Labels drawn over their images, the one way every command draws them
(export, predict, report, demo), in the label PNGs' palette colours."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


def with_legend(image: np.ndarray, label: np.ndarray, names: Sequence[str],
                skip: Collection[int] = ()) -> np.ndarray:
    """``image`` with a legend, drawn in its bottom-left corner, naming the colour of
    each class the label uses.

    Without it a reader of an overlay has to guess which colour is which class.
    Drawn inside the image so the overlay keeps the image's size (files line up
    with their images and labels). ``skip``: ids left out (those left unpainted).
    """
    ids = [int(i) for i in np.unique(label) if int(i) not in skip and int(i) < len(names)]
    if not ids:
        return image.copy()
    font = ImageFont.load_default()
    swatch, pad = 12, 4
    widths = [swatch + 4 + int(font.getlength(names[i])) for i in ids]
    height, width = image.shape[:2]
    rows: list[list[int]] = [[]]  # indices into ids, row by row, wrapped at the image width
    x = pad
    for index, item in enumerate(widths):
        if x + item + pad > width and rows[-1]:
            rows.append([])
            x = pad
        rows[-1].append(index)
        x += item + 2 * pad
    box_height = len(rows) * (swatch + pad) + pad
    box_width = min(width, max(sum(widths[i] + 2 * pad for i in row) for row in rows) + pad)
    canvas = Image.fromarray(image).convert("RGBA")
    box = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(box)
    top = max(0, height - box_height)
    draw.rectangle((0, top, box_width, height), fill=(255, 255, 255, 200))
    colours = voc_colormap()
    for row_index, row in enumerate(rows):
        y = top + pad + row_index * (swatch + pad)
        x = pad
        for index in row:
            class_id = ids[index]
            draw.rectangle((x, y, x + swatch, y + swatch),
                           fill=(*(int(c) for c in colours[class_id]), 255), outline="black")
            draw.text((x + swatch + 4, y), names[class_id], fill="black", font=font)
            x += widths[index] + 2 * pad
    return np.asarray(Image.alpha_composite(canvas, box).convert("RGB"))
