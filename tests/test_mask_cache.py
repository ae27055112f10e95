"""Mask proposals cached on disk: hits skip the generator, anything doubtful recomputes."""

from __future__ import annotations

import numpy as np
import pytest

from zsplg.masks.base import MaskProposals
from zsplg.masks.cache import CachedMaskGenerator, config_key, image_key
from zsplg.masks.superpixel import SuperpixelConfig, SuperpixelGenerator


class CountingGenerator:
    """Deterministic masks from the image; counts its calls."""

    name = "counting"

    def __init__(self, level: int = 128, empty: bool = False) -> None:
        self.level = level
        self.empty = empty
        self.calls = 0

    def config(self) -> dict:
        return {"name": self.name, "level": self.level, "empty": self.empty}

    def generate(self, image: np.ndarray) -> MaskProposals:
        self.calls += 1
        height, width = image.shape[:2]
        if self.empty:
            return MaskProposals.empty(height, width)
        gray = image.mean(axis=2)
        masks = np.stack([gray > self.level, gray <= self.level, np.zeros_like(gray, bool)])
        scores = np.array([0.9, 0.25, 1 / 3], dtype=np.float32)
        return MaskProposals.from_masks(masks, scores)


def image(seed: int = 0, shape: tuple[int, int] = (37, 53)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def assert_identical(a: MaskProposals, b: MaskProposals) -> None:
    for name in ("masks", "scores", "areas"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def test_hit_returns_identical_arrays_without_calling_the_generator(tmp_path):
    generator = CountingGenerator()
    cached = CachedMaskGenerator(generator, tmp_path)
    first = cached.generate(image())
    second = cached.generate(image())
    assert generator.calls == 1
    assert (cached.hits, cached.misses) == (1, 1)
    assert_identical(first, second)
    assert_identical(second, CountingGenerator().generate(image()))
    assert cached.entry_path(image()).is_file()
    assert cached.entry_path(image()).suffix == ".npz"


def test_other_image_or_config_misses(tmp_path):
    generator = CountingGenerator()
    cached = CachedMaskGenerator(generator, tmp_path)
    cached.generate(image(0))
    cached.generate(image(1))
    assert generator.calls == 2
    # the same bytes in another shape are another image
    flat = image(0).reshape(53, 37, 3)
    cached.generate(flat)
    assert generator.calls == 3

    other = CountingGenerator(level=100)
    cached_other = CachedMaskGenerator(other, tmp_path)
    result = cached_other.generate(image(0))
    assert other.calls == 1
    assert_identical(result, CountingGenerator(level=100).generate(image(0)))
    assert cached_other.entry_path(image(0)) != cached.entry_path(image(0))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other-entry"])
def test_corrupt_entry_is_recomputed(tmp_path, damage):
    generator = CountingGenerator()
    cached = CachedMaskGenerator(generator, tmp_path)
    expected = cached.generate(image())
    path = cached.entry_path(image())
    if damage == "garbage":
        path.write_bytes(b"definitely not an npz file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid entry of another image copied over this one
        cached.generate(image(5))
        path.write_bytes(cached.entry_path(image(5)).read_bytes())
    calls = generator.calls
    result = cached.generate(image())
    assert generator.calls == calls + 1
    assert cached.rejected == 1
    assert_identical(result, expected)
    # the entry was rewritten: the next call hits
    assert_identical(cached.generate(image()), expected)
    assert generator.calls == calls + 1


def test_empty_proposals_round_trip(tmp_path):
    generator = CountingGenerator(empty=True)
    cached = CachedMaskGenerator(generator, tmp_path)
    first = cached.generate(image())
    second = cached.generate(image())
    assert generator.calls == 1
    assert second.masks.shape == (0, 37, 53)
    assert_identical(first, second)


def test_name_and_config_delegate(tmp_path):
    generator = CountingGenerator(level=7)
    cached = CachedMaskGenerator(generator, tmp_path)
    assert cached.name == "counting"
    assert cached.config() == generator.config()


def test_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSPLG_CACHE_DIR", str(tmp_path / "zsplg-cache"))
    cached = CachedMaskGenerator(CountingGenerator())
    assert cached.cache_dir == tmp_path / "zsplg-cache" / "masks"
    cached.generate(image())
    assert cached.entry_path(image()).is_relative_to(tmp_path / "zsplg-cache" / "masks")


def test_unwritable_cache_still_returns_masks(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    generator = CountingGenerator()
    cached = CachedMaskGenerator(generator, blocker)
    with pytest.warns(RuntimeWarning, match="could not cache"):
        result = cached.generate(image())
    assert len(result) == 3


def test_keys():
    assert image_key(image(0)) == image_key(image(0).copy())
    assert image_key(image(0)) != image_key(image(1))
    assert image_key(image(0)) != image_key(image(0).reshape(53, 37, 3))
    assert config_key({"a": 1, "b": 2.0}) == config_key({"b": 2.0, "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})


def test_superpixel_generator_is_cached(tmp_path):
    picture = np.zeros((48, 64, 3), dtype=np.uint8)
    picture[:, 32:] = (200, 30, 30)
    picture[10:30, 5:20] = (20, 200, 40)
    generator = SuperpixelGenerator(SuperpixelConfig(scales=(50.0,)))
    cached = CachedMaskGenerator(generator, tmp_path)
    first = cached.generate(picture)
    second = cached.generate(picture)
    assert (cached.hits, cached.misses) == (1, 1)
    assert cached.name == "superpixel"
    assert_identical(first, second)
    assert_identical(first, generator.generate(picture))
