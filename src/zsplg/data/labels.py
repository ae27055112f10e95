"""Label and confidence PNG I/O, and atomic file writes.

Labels are single-channel palette PNGs (mode P) with the PASCAL VOC colour map:
the pixel values are the class ids that UniMatch-style loaders read, and the
palette makes them viewable. Every write goes through a temp file in the same
folder plus ``os.replace`` so an interrupted run never leaves a half-written
label that a later resume would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from zsplg.data.errors import InputError
from zsplg.data.images import load_pil


def _voc_palette() -> list[int]:
    palette: list[int] = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.extend((r, g, b))
    return palette


VOC_PALETTE: list[int] = _voc_palette()
"""PASCAL VOC colour map, flat [r0, g0, b0, r1, ...] (768 ints); 255 is (224, 224, 192)."""


def voc_colormap() -> np.ndarray:
    """The VOC colour map as a (256, 3) uint8 array, for overlays."""
    return np.array(VOC_PALETTE, dtype=np.uint8).reshape(256, 3)


# --------------------------------------------------------------------------- atomic writes


def _atomic_write(path: str | PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temp file next to ``path``, then rename it into place.

    The temp file lives in the destination folder so ``os.replace`` is a same-filesystem
    atomic rename; on any failure it is removed and the error re-raised, leaving an
    existing ``path`` untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but is not ours to signal
        return True
    return True


def remove_stale_temp_files(folder: str | PathLike[str]) -> list[Path]:
    """Delete temp files that a killed writer left under ``folder`` (recursively).

    A process killed between creating its temp file and the rename leaves
    ``.NAME.tmp-PID-XXXXXXXX`` behind; it is never mistaken for an output, but it
    is litter. Only files whose writer process no longer runs are removed, so a
    live writer in the same folder is never disturbed. Returns the removed paths.
    """
    root = Path(folder)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            match = _TEMP_NAME.match(name)
            if match is None or _pid_alive(int(match.group(1))):
                continue
            path = Path(dirpath) / name
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def atomic_write_bytes(path: str | PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename)."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically; used for JSON records such as run.json."""
    data = text.encode(encoding)
    _atomic_write(path, lambda f: f.write(data))


# --------------------------------------------------------------------------- labels


def _as_uint8_2d(name: str, arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty: shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"{name} values must fit uint8 (0..255), got range {lo}..{hi}")
    return a.astype(np.uint8)


def _upscaled(img: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """``img`` resized to ``size`` (height, width) with nearest neighbour, if it differs.

    Resizing the 8-bit PIL image, not a numpy array, keeps a huge photo's label at
    one byte per pixel with no intermediate copies (a 12000 x 9000 label is 108 MB).
    """
    if size is None:
        return img
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"output size must be positive, got {height}x{width}")
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.Resampling.NEAREST)


def write_label_png(
    path: str | PathLike[str], label: np.ndarray, size: tuple[int, int] | None = None
) -> None:
    """Save class ids as a VOC-palette PNG (mode P), atomically.

    ``size``: the (height, width) to write, when ``label`` was computed at a
    reduced size (nearest neighbour, so ids stay ids).
    """
    arr = _as_uint8_2d("label", label)
    # Build the P image from raw bytes so the indices stay exactly as given (convert("P")
    # would remap them to a palette of its own).
    img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr).tobytes())
    img.putpalette(VOC_PALETTE)
    img = _upscaled(img, size)
    _atomic_write(path, lambda f: img.save(f, format="PNG"))


class LabelModeError(InputError):
    """A label file that is not a single-channel index map (a colour-coded mask, say)."""

    def __init__(self, path: str | PathLike[str], mode: str) -> None:
        super().__init__(path, f"{mode} label: expected a single-channel index PNG")
        self.mode = mode


def read_index_array(path: str | PathLike[str]) -> np.ndarray:
    """A single-channel index image's values as integers (H, W), at their own bit depth.

    The one rule for what counts as an index map: palette PNGs are read as
    indices, never as colours; colour images are refused (:class:`LabelModeError`).
    16-bit values are kept, so a caller can name the ids out of range.
    """
    p = Path(path)
    img = load_pil(p, exif=False)
    mode = img.mode
    if mode in ("P", "L"):
        return np.asarray(img, dtype=np.uint8)
    if mode == "1":
        return np.asarray(img).astype(np.uint8)
    if mode.startswith("I"):
        return np.asarray(img)
    raise LabelModeError(p, mode)


def read_label(
    path: str | PathLike[str],
    num_classes: int | None = None,
    ignore_index: int = 255,
    expected_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read a single-channel index label as uint8 (H, W), validating ids and size.

    ``expected_size`` is the image (height, width) the label must match.
    """
    p = Path(path)
    arr = read_index_array(p)
    if arr.dtype != np.uint8:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise InputError(p, f"label values {lo}..{hi} do not fit 0..255")
        arr = arr.astype(np.uint8)
    if expected_size is not None and tuple(arr.shape) != tuple(expected_size):
        raise InputError(
            p,
            f"label size {arr.shape[0]}x{arr.shape[1]} (HxW) does not match "
            f"image size {expected_size[0]}x{expected_size[1]}",
        )
    if num_classes is not None:
        counts = np.bincount(arr.ravel(), minlength=256)
        present = np.flatnonzero(counts)
        bad = [int(v) for v in present if v >= num_classes and v != ignore_index]
        if bad:
            shown = ", ".join(str(v) for v in bad[:5])
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise InputError(
                p,
                f"label values out of range: {shown}{more} "
                f"(expected < {num_classes} or {ignore_index})",
            )
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------- confidence


def write_confidence_png(
    path: str | PathLike[str], confidence: np.ndarray, size: tuple[int, int] | None = None
) -> None:
    """Save a [0, 1] confidence map as 8-bit grayscale (round(c * 255)), atomically.

    ``size``: the (height, width) to write; the map is quantised first and then
    resized with nearest neighbour, which gives the same pixels as resizing the
    floats but never holds a float copy at the full size.
    """
    c = np.asarray(confidence)
    if c.ndim != 2:
        raise ValueError(f"confidence must be a 2-D (H, W) array, got shape {c.shape}")
    if c.size == 0:
        raise ValueError(f"confidence is empty: shape {c.shape}")
    c = c.astype(np.float64)
    if not np.isfinite(c).all():
        raise ValueError("confidence contains NaN or infinite values")
    lo, hi = float(c.min()), float(c.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"confidence must be in [0, 1], got range {lo}..{hi}")
    q = np.clip(np.rint(c * 255.0), 0, 255).astype(np.uint8)
    img = _upscaled(Image.fromarray(q), size)
    _atomic_write(path, lambda f: img.save(f, format="PNG"))


def read_confidence_png(path: str | PathLike[str]) -> np.ndarray:
    """Read a confidence PNG back as float32 in [0, 1]."""
    p = Path(path)
    img = load_pil(p, exif=False)
    if img.mode != "L":
        raise InputError(p, f"{img.mode} confidence map: expected 8-bit grayscale")
    return np.asarray(img, dtype=np.float32) / np.float32(255.0)
