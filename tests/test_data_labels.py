"""Label/confidence PNG I/O, the VOC palette, and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsplg.data import labels
from zsplg.data.errors import InputError
from zsplg.data.labels import (
    VOC_PALETTE,
    atomic_write_bytes,
    atomic_write_text,
    read_confidence_png,
    read_label,
    voc_colormap,
    write_confidence_png,
    write_label_png,
)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_voc_palette_known_entries() -> None:
    assert len(VOC_PALETTE) == 768
    cmap = voc_colormap()
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    assert cmap[0].tolist() == [0, 0, 0]
    assert cmap[1].tolist() == [128, 0, 0]
    assert cmap[2].tolist() == [0, 128, 0]
    assert cmap[15].tolist() == [192, 128, 128]
    assert cmap[20].tolist() == [0, 64, 128]
    assert cmap[255].tolist() == [224, 224, 192]
    assert VOC_PALETTE[3:6] == [128, 0, 0]


def test_label_round_trip(tmp_path: Path) -> None:
    label = np.array([[0, 1, 2, 255], [20, 21, 254, 0], [3, 3, 3, 3]], dtype=np.uint8)
    path = tmp_path / "sub" / "dir" / "x.png"
    write_label_png(path, label)
    with Image.open(path) as img:
        assert img.mode == "P"
        assert img.getpalette()[:768] == VOC_PALETTE
        np.testing.assert_array_equal(np.asarray(img), label)
    out = read_label(path, expected_size=(3, 4))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, label)
    # 254 is a valid id with 255 classes, and out of range with 22.
    np.testing.assert_array_equal(read_label(path, num_classes=255), label)
    with pytest.raises(InputError, match="254"):
        read_label(path, num_classes=22)
    assert _leftovers(path.parent) == []


def test_label_accepts_wider_int_dtypes(tmp_path: Path) -> None:
    label = np.array([[0, 7], [255, 1]], dtype=np.int64)
    write_label_png(tmp_path / "a.png", label)
    np.testing.assert_array_equal(read_label(tmp_path / "a.png"), label)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 2, 3), dtype=np.uint8),
        np.zeros((4,), dtype=np.uint8),
        np.array([[0, 256]], dtype=np.int32),
        np.array([[0, -1]], dtype=np.int32),
        np.array([[0.0, 1.0]]),
        np.zeros((0, 3), dtype=np.uint8),
    ],
)
def test_label_write_rejects(tmp_path: Path, bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        write_label_png(tmp_path / "bad.png", bad)
    assert not (tmp_path / "bad.png").exists()
    assert _leftovers(tmp_path) == []


def test_failed_write_keeps_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.png"
    old = np.full((4, 4), 5, dtype=np.uint8)
    write_label_png(path, old)
    before = path.read_bytes()

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_label_png(path, np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(OSError, match="disk full"):
        write_confidence_png(path, np.zeros((4, 4)))
    monkeypatch.undo()
    assert path.read_bytes() == before
    np.testing.assert_array_equal(read_label(path), old)
    assert _leftovers(tmp_path) == []


def test_atomic_write_text_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "new" / "run.json"
    atomic_write_text(path, json.dumps({"a": "é"}))
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "é"}
    atomic_write_text(path, "{}")
    assert path.read_text() == "{}"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert _leftovers(path.parent) == [] and _leftovers(tmp_path) == []


def test_atomic_write_cleans_up_on_rename_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.txt"
    path.write_text("old")

    def fail(src: object, dst: object) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(labels.os, "replace", fail)
    with pytest.raises(OSError, match="rename failed"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_confidence_round_trip(tmp_path: Path) -> None:
    conf = np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)
    path = tmp_path / "c" / "x.png"
    write_confidence_png(path, conf)
    with Image.open(path) as img:
        assert img.mode == "L"
        raw = np.asarray(img)
    np.testing.assert_array_equal(raw, np.rint(conf * 255).astype(np.uint8))
    back = read_confidence_png(path)
    assert back.dtype == np.float32 and back.shape == (5, 6)
    assert np.abs(back - conf).max() <= 0.5 / 255 + 1e-6
    assert back[0, 0] == 0.0 and back[-1, -1] == 1.0


@pytest.mark.parametrize(
    "bad",
    [np.array([[0.5, 1.5]]), np.array([[-0.1, 0.5]]), np.array([[np.nan, 0.5]]), np.ones(3)],
)
def test_confidence_rejects(tmp_path: Path, bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        write_confidence_png(tmp_path / "c.png", bad)
    assert not (tmp_path / "c.png").exists()


def test_read_confidence_rejects_rgb(tmp_path: Path) -> None:
    Image.new("RGB", (3, 3)).save(tmp_path / "c.png")
    with pytest.raises(InputError, match="grayscale"):
        read_confidence_png(tmp_path / "c.png")


def test_read_label_grayscale_and_16bit(tmp_path: Path) -> None:
    arr = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label(tmp_path / "l.png", num_classes=3), arr)
    Image.fromarray(arr.astype(np.uint16)).save(tmp_path / "i16.png")
    out = read_label(tmp_path / "i16.png", num_classes=3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_read_label_16bit_too_large(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 300]], dtype=np.uint16)).save(tmp_path / "i16.png")
    with pytest.raises(InputError, match="300"):
        read_label(tmp_path / "i16.png")


def test_read_label_palette_means_indices(tmp_path: Path) -> None:
    # Colours in the palette must not leak into the ids.
    img = Image.new("P", (2, 2), 3)
    img.putpalette([9] * 768)
    img.save(tmp_path / "p.png")
    assert (read_label(tmp_path / "p.png") == 3).all()


def test_read_label_rgb(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    Image.new("RGB", (3, 3), (128, 0, 0)).save(path)
    with pytest.raises(InputError) as info:
        read_label(path)
    assert str(info.value) == f"{path}: RGB label: expected a single-channel index PNG"


def test_read_label_size_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "s.png"
    write_label_png(path, np.zeros((4, 6), dtype=np.uint8))
    with pytest.raises(InputError) as info:
        read_label(path, expected_size=(6, 4))
    msg = str(info.value)
    assert str(path) in msg and "4x6" in msg and "6x4" in msg


def test_read_label_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "o.png"
    label = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 255]], dtype=np.uint8)
    write_label_png(path, label)
    assert read_label(path, num_classes=9).max() == 255
    with pytest.raises(InputError) as info:
        read_label(path, num_classes=2)
    msg = str(info.value)
    assert str(path) in msg
    assert "2, 3, 4, 5, 6" in msg and "(and 2 more)" in msg
    assert "255" not in msg.split("(expected")[0]
    with pytest.raises(InputError, match="255"):
        read_label(path, num_classes=9, ignore_index=254)


def test_read_label_unreadable(tmp_path: Path) -> None:
    empty = tmp_path / "e.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        read_label(empty)
    with pytest.raises(InputError, match="file not found"):
        read_label(tmp_path / "missing.png")
    junk = tmp_path / "j.png"
    junk.write_text("hello")
    with pytest.raises(InputError, match="not an image or corrupt"):
        read_label(junk)
