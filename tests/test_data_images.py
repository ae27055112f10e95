"""Image reading: every pixel format, EXIF orientation, downscaling, corrupt files."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsplg.data import images
from zsplg.data.errors import InputError
from zsplg.data.images import IMAGE_EXTENSIONS, image_size, read_image


def _save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    img.save(path, **kwargs)
    return path


def _check(arr: np.ndarray, h: int, w: int) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (h, w, 3)


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG that declares w x h but holds no pixel data (header tests, no decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    return path


def test_extensions() -> None:
    assert ".jpg" in IMAGE_EXTENSIONS and ".webp" in IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


def test_rgb_png_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    out = read_image(_save(Image.fromarray(arr), tmp_path / "a.png"))
    _check(out, 7, 9)
    np.testing.assert_array_equal(out, arr)


def test_grayscale(tmp_path: Path) -> None:
    out = read_image(_save(Image.new("L", (5, 4), 77), tmp_path / "g.png"))
    _check(out, 4, 5)
    assert (out == 77).all()


def test_la_drops_alpha(tmp_path: Path) -> None:
    out = read_image(_save(Image.new("LA", (5, 4), (90, 0)), tmp_path / "la.png"))
    _check(out, 4, 5)
    assert (out == 90).all()


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    out = read_image(_save(Image.new("RGBA", (6, 3), (10, 20, 30, 0)), tmp_path / "x.png"))
    _check(out, 3, 6)
    assert (out == [10, 20, 30]).all()


def test_palette(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 200, 100, 50] + [0] * (768 - 6))
    out = read_image(_save(img, tmp_path / "p.png"))
    _check(out, 4, 4)
    assert (out == [200, 100, 50]).all()


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 200, 100, 50] + [0] * (768 - 6))
    path = _save(img, tmp_path / "pt.png", transparency=bytes([255, 0]))
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_image(path)
    assert (out == [200, 100, 50]).all()


def test_16bit_png(tmp_path: Path) -> None:
    arr = np.array([[0, 257 * 100], [65535, 257 * 3]], dtype=np.uint16)
    path = _save(Image.fromarray(arr), tmp_path / "d.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    out = read_image(path)
    _check(out, 2, 2)
    np.testing.assert_array_equal(out[..., 0], [[0, 100], [255, 3]])
    assert (out[..., 0] == out[..., 2]).all()


def test_float_tiff_min_max(tmp_path: Path) -> None:
    arr = np.array([[-5.0, 0.0], [5.0, 15.0]], dtype=np.float32)
    out = read_image(_save(Image.fromarray(arr), tmp_path / "f.tif"))
    np.testing.assert_array_equal(out[..., 1], [[0, 64], [128, 255]])


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = _save(Image.new("CMYK", (16, 8), (0, 0, 0, 0)), tmp_path / "c.jpg", quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    out = read_image(path)
    _check(out, 8, 16)
    assert out.min() >= 250  # no ink = white


def test_exif_rotated_jpeg(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high; the left-most 8 columns are red, the rest blue.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :8] = (255, 0, 0)
    arr[:, 8:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(img, tmp_path / "r.jpg", exif=exif, quality=95)
    assert image_size(path) == (40, 20)
    out = read_image(path)
    _check(out, 40, 20)
    # After a clockwise turn the stored left edge is the displayed top edge.
    assert out[2, 10, 0] > 200 and out[2, 10, 2] < 50
    assert out[30, 10, 2] > 200 and out[30, 10, 0] < 50


def test_tiny_image(tmp_path: Path) -> None:
    out = read_image(_save(Image.new("RGB", (8, 8), (1, 2, 3)), tmp_path / "t.bmp"))
    _check(out, 8, 8)
    assert (out == [1, 2, 3]).all()


def test_big_jpeg_max_side(tmp_path: Path) -> None:
    img = Image.new("RGB", (4000, 3000), (0, 128, 255))
    path = _save(img, tmp_path / "big.jpg", quality=50)
    assert image_size(path) == (3000, 4000)
    out = read_image(path, max_side=1024)
    _check(out, 768, 1024)
    assert abs(int(out[400, 500, 1]) - 128) <= 3
    assert read_image(path, max_side=5000).shape == (3000, 4000, 3)


def test_png_max_side_portrait(tmp_path: Path) -> None:
    path = _save(Image.new("L", (60, 900), 9), tmp_path / "tall.png")
    out = read_image(path, max_side=300)
    _check(out, 300, 20)
    assert (out == 9).all()


def test_max_side_must_be_positive(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (4, 4)), tmp_path / "a.png")
    with pytest.raises(ValueError):
        read_image(path, max_side=0)


def test_large_header_not_a_bomb(tmp_path: Path) -> None:
    path = _png_header_only(tmp_path / "h.png", 12000, 9000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image_size(path) == (9000, 12000)


def test_too_many_pixels(tmp_path: Path) -> None:
    path = _png_header_only(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(InputError, match="too large"):
        read_image(path)


def test_pixel_limit_is_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("RGB", (20, 20)), tmp_path / "a.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(InputError, match="too large"):
        read_image(path)


def _reason(path: Path) -> str:
    with pytest.raises(InputError) as info:
        read_image(path)
    assert info.value.path == str(path)
    return info.value.reason


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "z.jpg"
    path.write_bytes(b"")
    assert _reason(path) == "empty file"
    with pytest.raises(InputError, match="empty file"):
        image_size(path)


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert _reason(path) == "truncated image file"


def test_truncated_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    reason = _reason(path)
    assert reason == "truncated image file" or reason.startswith("not an image or corrupt")


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    assert _reason(path).startswith("not an image or corrupt")
    with pytest.raises(InputError, match="not an image or corrupt"):
        image_size(path)


def test_missing_file(tmp_path: Path) -> None:
    assert _reason(tmp_path / "nope.png") == "file not found"
    with pytest.raises(InputError, match="file not found"):
        image_size(tmp_path / "nope.png")


def test_directory(tmp_path: Path) -> None:
    d = tmp_path / "d.png"
    d.mkdir()
    assert "directory" in _reason(d)
