"""Image sources: recursive folders, pair-lists, output keys, missing files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zsplg.data.errors import InputError
from zsplg.data.sources import (
    Sample,
    list_images,
    missing_files,
    read_pair_list,
    resolve_sources,
)


def _touch(root: Path, *names: str) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def _k(*parts: str) -> str:
    return os.path.join(*parts)


def test_list_images_recursive_sorted_filtered(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "b.JPG",
        "a.png",
        "sub/c.jpeg",
        "sub/deeper/d.TIFF",
        "sub/e.webp",
        "notes.txt",
        "f.gif",
        "noext",
        ".hidden.png",
        ".cache/g.png",
        "sub/.thumbs/h.jpg",
    )
    samples = list_images(tmp_path)
    assert [s.key for s in samples] == [
        "a",
        "b",
        _k("sub", "c"),
        _k("sub", "deeper", "d"),
        _k("sub", "e"),
    ]
    assert samples[3].image == tmp_path / "sub" / "deeper" / "d.TIFF"
    assert all(s.label is None for s in samples)
    assert all(isinstance(s, Sample) for s in samples)


def test_list_images_key_collision(tmp_path: Path) -> None:
    _touch(tmp_path, "x/a.jpg", "x/a.png", "b.png")
    with pytest.raises(InputError) as info:
        list_images(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg
    assert _k("x", "a.jpg") in msg and _k("x", "a.png") in msg


def test_same_stem_in_different_folders_is_fine(tmp_path: Path) -> None:
    _touch(tmp_path, "a/img.jpg", "b/img.jpg")
    assert [s.key for s in list_images(tmp_path)] == [_k("a", "img"), _k("b", "img")]


def test_list_images_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="folder not found"):
        list_images(tmp_path / "nope")
    _touch(tmp_path, "only.txt", ".h.png")
    with pytest.raises(InputError, match="no images found"):
        list_images(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        list_images(tmp_path / "only.txt")


def test_pair_list_with_and_without_labels(tmp_path: Path) -> None:
    lst = tmp_path / "splits" / "train.txt"
    lst.parent.mkdir()
    lst.write_text(
        "# comment line\n"
        "\n"
        "JPEGImages/a.jpg SegmentationClass/a.png\n"
        "   JPEGImages/b.jpg   \n"
        "  # indented comment\n"
        "JPEGImages/sub/c.jpg\tSegmentationClass/sub/c.png\n"
    )
    base = lst.parent
    samples = read_pair_list(lst)
    assert [s.key for s in samples] == [
        _k("JPEGImages", "a"),
        _k("JPEGImages", "b"),
        _k("JPEGImages", "sub", "c"),
    ]
    assert samples[0].image == (base / "JPEGImages" / "a.jpg").absolute()
    assert samples[0].label == (base / "SegmentationClass" / "a.png").absolute()
    assert samples[1].label is None
    assert samples[2].label == (base / "SegmentationClass" / "sub" / "c.png").absolute()


def test_pair_list_absolute_and_parent_paths(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lst = tmp_path / "lists" / "l.txt"
    lst.parent.mkdir()
    inside = lst.parent / "img" / "in.png"
    lst.write_text(f"{inside} \n../data/x.jpg\n{data / 'y.jpg'} {data / 'y.png'}\n")
    samples = read_pair_list(lst)
    assert samples[0].image == inside and samples[0].key == _k("img", "in")
    assert samples[1].image == data / "x.jpg"
    assert samples[2].image == data / "y.jpg" and samples[2].label == data / "y.png"
    # Keys outside the list folder must stay relative (never escape the output folder).
    for s in samples[1:]:
        assert not os.path.isabs(s.key) and ".." not in Path(s.key).parts
        assert s.key.endswith(_k("data", s.image.stem))
    assert samples[1].key != samples[2].key


def test_pair_list_relative_list_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "l.txt").write_text("imgs/a.jpg\n")
    monkeypatch.chdir(tmp_path)
    (s,) = read_pair_list("l.txt")
    assert s.key == _k("imgs", "a")
    assert s.image == tmp_path / "imgs" / "a.jpg"


def test_pair_list_too_many_fields(tmp_path: Path) -> None:
    lst = tmp_path / "l.txt"
    lst.write_text("a.jpg a.png\n# x y z\nb.jpg b.png extra\n")
    with pytest.raises(InputError) as info:
        read_pair_list(lst)
    msg = str(info.value)
    assert msg.startswith(f"{lst}: ") and "line 3" in msg and "3 fields" in msg


def test_pair_list_duplicate_key(tmp_path: Path) -> None:
    lst = tmp_path / "l.txt"
    lst.write_text("a.jpg\nb.jpg\na.png\n")
    with pytest.raises(InputError, match="line 3.*line 1"):
        read_pair_list(lst)


def test_pair_list_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        read_pair_list(tmp_path / "nope.txt")
    lst = tmp_path / "l.txt"
    lst.write_text("# only a comment\n\n")
    with pytest.raises(InputError, match="no entries"):
        read_pair_list(lst)


def test_pair_list_does_not_check_files_but_missing_files_does(tmp_path: Path) -> None:
    _touch(tmp_path, "ok.jpg", "ok.png", "nolabel.jpg")
    lst = tmp_path / "l.txt"
    lst.write_text("ok.jpg ok.png\nnolabel.jpg gone.png\ngone.jpg\nnolabel.jpg\ngone2.jpg x.png\n")
    with pytest.raises(InputError, match="line 4"):
        read_pair_list(lst)
    lst.write_text("ok.jpg ok.png\nnolabel.jpg gone.png\ngone.jpg\ngone2.jpg x.png\n")
    samples = read_pair_list(lst)
    assert len(samples) == 4
    missing = missing_files(samples)
    assert [s.key for s, _ in missing] == ["nolabel", "gone", "gone2"]
    reasons = [r for _, r in missing]
    assert reasons[0] == f"label not found: {tmp_path / 'gone.png'}"
    assert reasons[1] == f"image not found: {tmp_path / 'gone.jpg'}"
    assert "image not found" in reasons[2] and "label not found" in reasons[2]
    _touch(tmp_path, "folder/a.jpg")
    assert missing_files(list_images(tmp_path / "folder")) == []


def test_resolve_sources(tmp_path: Path) -> None:
    _touch(tmp_path, "imgs/a.png")
    lst = tmp_path / "l.txt"
    lst.write_text("imgs/a.png\n")
    assert [s.key for s in resolve_sources(tmp_path / "imgs", None)] == ["a"]
    assert [s.key for s in resolve_sources(None, lst)] == [_k("imgs", "a")]
    with pytest.raises(ValueError, match="both"):
        resolve_sources(tmp_path / "imgs", lst)
    with pytest.raises(ValueError, match="none"):
        resolve_sources(None, None)
