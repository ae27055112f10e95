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
    """``image`` with a strip below naming the colour of each class the label uses.

    Without it a reader of an overlay has to guess which colour is which class;
    ``skip``: ids left out of the legend (those the overlay left unpainted).
    """
    ids = [int(i) for i in np.unique(label) if int(i) not in skip and int(i) < len(names)]
    font = ImageFont.load_default()
    swatch, pad = 12, 6
    width = image.shape[1]
    rows: list[list[tuple[int, str, int]]] = [[]]
    x = pad
    for class_id in ids:
        text = names[class_id]
        text_width = int(font.getlength(text))
        item = swatch + 4 + text_width + 2 * pad
        if x + item > width and rows[-1]:
            rows.append([])
            x = pad
        rows[-1].append((class_id, text, x))
        x += item
    height = (swatch + pad) * len(rows) + pad if ids else 0
    canvas = Image.new("RGB", (width, image.shape[0] + height), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    colours = voc_colormap()
    for row_index, row in enumerate(rows):
        y = image.shape[0] + pad + row_index * (swatch + pad)
        for class_id, text, x0 in row:
            draw.rectangle((x0, y, x0 + swatch, y + swatch),
                           fill=tuple(int(c) for c in colours[class_id]), outline="black")
            draw.text((x0 + swatch + 4, y), text, fill="black", font=font)
    return np.asarray(canvas)
