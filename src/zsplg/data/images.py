"""Reading input images robustly into uint8 RGB arrays.

Real datasets contain grayscale, palette, 16-bit, CMYK and EXIF-rotated files,
huge photos and the odd corrupt download. Everything is normalised here to
one (H, W, 3) uint8 layout, and every undecodable file becomes an
:class:`InputError` naming the file, so the run can report it and go on.

Alpha channels are dropped (not composited): the colour under a transparent
pixel is what the model sees.
"""

from __future__ import annotations

import math
import struct
import warnings
import zlib
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from zsplg.data.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

MAX_PIXELS = 200_000_000
"""Largest accepted image (pixels). Bigger files are refused before decoding."""

# PIL refuses images above 2 * MAX_IMAGE_PIXELS (89 MP by default) as decompression
# bombs; a 12000 x 9000 photo is legitimate here, so raise PIL's limit to ours and
# enforce MAX_PIXELS ourselves with a clear message.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    Image.DecompressionBombError,
)

_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


def _check_file(p: Path) -> None:
    if not p.exists():
        raise InputError(p, "file not found")
    if p.is_dir():
        raise InputError(p, "is a directory, not an image file")
    if p.stat().st_size == 0:
        raise InputError(p, "empty file")


def _decode_error(p: Path, exc: BaseException) -> InputError:
    """Turn a PIL/decoder exception into a one-line InputError."""
    if isinstance(exc, FileNotFoundError):
        return InputError(p, "file not found")
    if isinstance(exc, IsADirectoryError):
        return InputError(p, "is a directory, not an image file")
    if isinstance(exc, PermissionError):
        return InputError(p, "permission denied")
    if isinstance(exc, Image.DecompressionBombError):
        return InputError(p, f"image too large (more than {MAX_PIXELS} pixels)")
    if isinstance(exc, UnidentifiedImageError):
        return InputError(p, "not an image or corrupt: unrecognised file format")
    message = " ".join(str(exc).split()) or type(exc).__name__
    if "truncated" in message.lower():
        return InputError(p, "truncated image file")
    return InputError(p, f"not an image or corrupt: {message}")


def _check_pixels(p: Path, size: tuple[int, int]) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise InputError(p, f"image too large: {w}x{h} exceeds {MAX_PIXELS} pixels")


def _open(p: Path) -> Image.Image:
    # Sizes between PIL's warning threshold and MAX_PIXELS are fine here, and larger ones
    # get our own InputError, so PIL's DecompressionBombWarning would only be noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(p)


def load_pil(
    path: str | PathLike[str], *, exif: bool = True, max_side: int | None = None
) -> Image.Image:
    """Open and fully decode ``path``; return a detached, loaded PIL image.

    Decoding everything here (``load()`` inside the ``try``) is what makes a truncated
    file fail loudly instead of coming back partly grey. ``exif`` applies the EXIF
    orientation; ``max_side`` only lets JPEG decode at a reduced scale (``draft``), the
    result may still be larger than ``max_side``.
    """
    p = Path(path)
    _check_file(p)
    try:
        with _open(p) as img:
            _check_pixels(p, img.size)
            if max_side is not None and img.format == "JPEG" and max(img.size) > max_side:
                scale = max_side / max(img.size)
                w, h = img.size
                img.draft(None, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
            img.load()
            if exif:
                transposed = ImageOps.exif_transpose(img)
                return transposed if transposed is not None else img
            return img
    except InputError:
        raise
    except _DECODE_ERRORS as exc:
        raise _decode_error(p, exc) from None


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map a 16-bit, int32 or float single-channel array to uint8.

    The range is chosen from the data: values already in 0..255 stay as they are,
    0..65535 is divided by 257 (the full 16-bit range), floats in [0, 1] are times
    255, anything else is min-max scaled.
    """
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if np.issubdtype(arr.dtype, np.floating):
        if lo >= 0.0 and hi <= 1.0:
            out = a * 255.0
        elif hi > lo:
            out = (a - lo) * (255.0 / (hi - lo))
        else:
            out = np.zeros_like(a)
    elif arr.dtype.itemsize == 2 and lo >= 0:
        out = a / 257.0
    elif lo >= 0 and hi <= 255:
        out = a
    elif lo >= 0 and hi <= 65535:
        out = a / 257.0
    elif hi > lo:
        out = (a - lo) * (255.0 / (hi - lo))
    else:
        out = np.zeros_like(a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_rgb(p: Path, img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        gray = _scale_to_uint8(np.asarray(img))
        return Image.fromarray(gray).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        # Going through RGBA keeps PIL from warning about byte transparency.
        return img.convert("RGBA").convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(p, f"unsupported image mode {mode}: {exc}") from None


def read_image(path: str | PathLike[str], max_side: int | None = None) -> np.ndarray:
    """Read any supported image as an upright uint8 RGB (H, W, 3) array.

    ``max_side`` bounds memory for huge inputs: if the longer side is larger, the
    image is downscaled (aspect kept, LANCZOS after a box pre-reduction) so that the
    longer side equals ``max_side``.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    p = Path(path)
    img = _to_rgb(p, load_pil(p, exif=True, max_side=max_side))
    w, h = img.size
    if max_side is not None and max(w, h) > max_side:
        scale = max_side / max(w, h)
        new = (
            max_side if w >= h else max(1, round(w * scale)),
            max_side if h > w else max(1, round(h * scale)),
        )
        img = img.resize(new, Image.Resampling.LANCZOS, reducing_gap=2.0)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(p, f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def image_size(path: str | PathLike[str]) -> tuple[int, int]:
    """(height, width) after EXIF orientation, read from the header without decoding."""
    p = Path(path)
    _check_file(p)
    try:
        with _open(p) as img:
            w, h = img.size
            try:
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            except _DECODE_ERRORS:
                orientation = 1
    except _DECODE_ERRORS as exc:
        raise _decode_error(p, exc) from None
    if orientation in _SWAPPING_ORIENTATIONS:
        return w, h
    return h, w
