"""The offline mask generator: multi-scale Felzenszwalb segmentation."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from skimage.transform import resize

from zsplg.masks import build_mask_generator, resolve_mask_generator_name
from zsplg.masks import superpixel as superpixel_module
from zsplg.masks.base import MaskProposals
from zsplg.masks.superpixel import SuperpixelConfig, SuperpixelGenerator

BACKGROUND_RGB = (30, 90, 200)
RECT_1 = (slice(30, 130), slice(25, 150))  # 100 x 125, red
RECT_2 = (slice(150, 240), slice(180, 300))  # 90 x 120, green


def synthetic_scene() -> np.ndarray:
    """Two flat-colour rectangles on a flat background (256 x 320)."""
    image = np.empty((256, 320, 3), dtype=np.uint8)
    image[:] = BACKGROUND_RGB
    image[RECT_1] = (220, 40, 40)
    image[RECT_2] = (40, 200, 60)
    return image


def astronaut_small() -> np.ndarray:
    image = skimage.data.astronaut()
    return resize(image, (192, 192), anti_aliasing=True, preserve_range=True).astype(np.uint8)


@pytest.fixture(scope="module")
def generator() -> SuperpixelGenerator:
    return SuperpixelGenerator()


@pytest.fixture(scope="module")
def scene_proposals(generator) -> MaskProposals:
    return generator.generate(synthetic_scene())


@pytest.fixture(scope="module")
def astronaut_proposals(generator) -> tuple[np.ndarray, MaskProposals]:
    image = astronaut_small()
    return image, generator.generate(image)


def check_proposals(proposals: MaskProposals, height: int, width: int,
                    scales: int = len(SuperpixelConfig().scales)) -> None:
    """The invariants every generate() result must hold."""
    masks = proposals.masks
    assert masks.dtype == np.bool_
    assert masks.ndim == 3 and masks.shape[1:] == (height, width)
    n = len(proposals)
    assert n >= 1
    assert proposals.scores.shape == (n,) and proposals.scores.dtype == np.float32
    assert proposals.areas.shape == (n,)
    np.testing.assert_array_equal(proposals.areas, [np.count_nonzero(mask) for mask in masks])
    assert (proposals.areas > 0).all()  # no empty mask
    assert (proposals.scores > 0).all() and (proposals.scores <= 1).all()
    keys = {np.packbits(mask).tobytes() for mask in masks}
    assert len(keys) == n  # no duplicate masks
    # Each scale is a partition of the image, and duplicates across scales are dropped,
    # so every pixel lies in at least one and at most one mask per scale.
    coverage = masks.sum(axis=0)
    assert coverage.min() >= 1
    assert coverage.max() <= scales


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_synthetic_scene_invariants(scene_proposals):
    check_proposals(scene_proposals, 256, 320)


@pytest.mark.parametrize("rect", [RECT_1, RECT_2])
def test_synthetic_rectangles_are_recovered(scene_proposals, rect):
    target = np.zeros((256, 320), dtype=bool)
    target[rect] = True
    best = max(iou(mask, target) for mask in scene_proposals.masks)
    # Gaussian pre-smoothing (sigma 0.8) leaves a 1-2 px ring of blended
    # colours that Felzenszwalb keeps as its own thin region: about 0.89 here.
    assert best > 0.85


def test_flat_regions_score_higher_than_textured_ones(scene_proposals):
    """The rectangle masks are flat colour: homogeneity 1 (up to float rounding)."""
    target = np.zeros((256, 320), dtype=bool)
    target[RECT_1] = True
    best = int(np.argmax([iou(mask, target) for mask in scene_proposals.masks]))
    assert scene_proposals.scores[best] > 0.99


def test_astronaut_invariants(astronaut_proposals):
    image, proposals = astronaut_proposals
    check_proposals(proposals, *image.shape[:2])
    # Multi-scale: the smallest regions are much smaller than the largest ones.
    assert proposals.areas.max() > 10 * proposals.areas.min()
    assert proposals.scores.min() < 0.9  # textured regions are not scored as flat


def test_deterministic(generator, astronaut_proposals):
    image, first = astronaut_proposals
    second = generator.generate(image.copy())
    np.testing.assert_array_equal(first.masks, second.masks)
    np.testing.assert_array_equal(first.scores, second.scores)
    np.testing.assert_array_equal(first.areas, second.areas)


@pytest.fixture()
def seen_shapes(monkeypatch) -> list:
    """The shapes of the images felzenszwalb is called on."""
    shapes = []
    real = superpixel_module.felzenszwalb

    def recording(image, **kwargs):
        shapes.append(image.shape)
        return real(image, **kwargs)

    monkeypatch.setattr(superpixel_module, "felzenszwalb", recording)
    return shapes


def test_large_image_is_segmented_at_work_side_and_returned_at_full_size(seen_shapes):
    image = np.empty((1500, 1000, 3), dtype=np.uint8)
    image[:] = BACKGROUND_RGB
    image[200:700, 100:600] = (220, 40, 40)
    image[900:1400, 500:950] = (40, 200, 60)
    config = SuperpixelConfig()
    proposals = SuperpixelGenerator(config).generate(image)
    check_proposals(proposals, 1500, 1000)
    target = np.zeros((1500, 1000), dtype=bool)
    target[200:700, 100:600] = True
    assert max(iou(mask, target) for mask in proposals.masks) > 0.9
    assert len(seen_shapes) == len(config.scales)
    work = (config.work_side, round(1000 * config.work_side / 1500), 3)
    assert all(shape == work for shape in seen_shapes)


def test_small_image_is_not_upscaled(seen_shapes):
    SuperpixelGenerator().generate(synthetic_scene())
    assert seen_shapes and all(shape == (256, 320, 3) for shape in seen_shapes)


def test_work_side_setting_is_honoured():
    image = synthetic_scene()
    proposals = SuperpixelGenerator(SuperpixelConfig(work_side=64)).generate(image)
    check_proposals(proposals, 256, 320)


@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_image(seed):
    image = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    proposals = SuperpixelGenerator().generate(image)
    check_proposals(proposals, 8, 8)


def test_flat_image_is_one_mask():
    image = np.full((40, 30, 3), 128, dtype=np.uint8)
    proposals = SuperpixelGenerator().generate(image)
    assert len(proposals) == 1  # the same whole-image region at every scale, kept once
    assert proposals.masks[0].all()
    assert proposals.scores[0] == pytest.approx(1.0)


def test_config_and_factory():
    generator = build_mask_generator("auto", scales=(50.0,), work_side=128)
    assert isinstance(generator, SuperpixelGenerator)
    config = generator.config()
    assert config["name"] == "superpixel"
    assert config["scales"] == (50.0,) and config["work_side"] == 128
    assert resolve_mask_generator_name("auto") == "superpixel"
    with pytest.raises(ValueError, match="segformer"):
        resolve_mask_generator_name("segformer")


def test_scales_are_rescaled_for_smaller_images(monkeypatch):
    seen_scales = []
    real = superpixel_module.felzenszwalb

    def recording(image, scale, **kwargs):
        seen_scales.append(scale)
        return real(image, scale=scale, **kwargs)

    monkeypatch.setattr(superpixel_module, "felzenszwalb", recording)
    config = SuperpixelConfig()
    image = np.zeros((128, 256, 3), dtype=np.uint8)  # long side 256 = half the reference
    SuperpixelGenerator(config).generate(image)
    assert len(seen_scales) == len(config.scales)
    assert all(seen < given for seen, given in zip(seen_scales, config.scales, strict=True))
