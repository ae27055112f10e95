"""Mask pooling, naming and painting, with a tiny fake backend (no weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from zsplg import IGNORE_INDEX
from zsplg.choices import OVERLAP_POLICIES, UNCOVERED_POLICIES
from zsplg.labeling.annotate import Annotator, pool_masks
from zsplg.labeling.painting import MASK_CHUNK as _MASK_CHUNK
from zsplg.labeling.settings import AnnotatorConfig
from zsplg.masks.base import MaskProposals
from zsplg.vl.base import thresholded_softmax

THRESHOLD = 0.5
TEMPERATURE = 0.1


class FakeBackend:
    """Features already live in the text space; scoring is the cosine + thresholded softmax."""

    name = "fake"
    default_threshold = THRESHOLD
    default_temperature = TEMPERATURE

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        raise NotImplementedError  # the tests hand features to the annotator directly

    def encode_text(self, prompts: list[list[str]]) -> torch.Tensor:
        raise NotImplementedError

    def class_probabilities(self, pooled: torch.Tensor, text: torch.Tensor, threshold: float,
                            temperature: float) -> torch.Tensor:
        return thresholded_softmax(F.normalize(pooled, dim=-1) @ text.T, threshold, temperature)

    def config(self) -> dict:
        return {"name": self.name}


# Three orthogonal directions: two classes and one "nothing" direction.
A = torch.tensor([1.0, 0.0, 0.0])
B = torch.tensor([0.0, 1.0, 0.0])
NOWHERE = torch.tensor([0.0, 0.0, 1.0])
TEXT = torch.stack([A, B])  # class ids below: A -> 3, B -> 7 (not contiguous on purpose)
CLASS_IDS = [3, 7]
BACKGROUND = 0


def expected_probs(similarities: list[float], threshold: float = THRESHOLD,
                   temperature: float = TEMPERATURE) -> np.ndarray:
    """[background, classes...] probabilities, computed independently in numpy."""
    logits = np.array([threshold, *similarities], dtype=np.float64) / temperature
    e = np.exp(logits - logits.max())
    return e / e.sum()


def make_annotator(background_id: int | None = BACKGROUND, **config) -> Annotator:
    return Annotator(FakeBackend(), TEXT.clone(), CLASS_IDS, background_id,
                     AnnotatorConfig(**config))


def naive_pool(features: torch.Tensor, masks: np.ndarray) -> torch.Tensor:
    """Upsample the whole map to image size, then take the masked mean."""
    height, width = masks.shape[1:]
    up = F.interpolate(features[None].double(), size=(height, width), mode="bilinear",
                       align_corners=False)[0]
    m = torch.from_numpy(masks).double()
    area = m.sum(dim=(1, 2)).clamp_min(1.0)
    return torch.einsum("nhw,dhw->nd", m, up) / area[:, None]


# --------------------------------------------------------------------------- pool_masks


@pytest.mark.parametrize(
    ("d", "h", "w", "height", "width", "n"),
    [
        (4, 7, 5, 50, 33, 10),  # non-integer scale factors on both axes
        (3, 7, 5, 50, 33, 2 * _MASK_CHUNK + 3),  # more masks than one chunk (three chunks)
        (5, 9, 14, 288, 448, 5),  # the ConSE feature grid at 448 px
        (2, 20, 12, 7, 9, 6),  # map finer than the image (downsampling)
        (3, 6, 6, 6, 6, 4),  # same size: the identity
    ],
)
def test_pool_masks_equals_naive_upsample_then_mean(d, h, w, height, width, n):
    generator = torch.Generator().manual_seed(h * 1000 + n)
    features = torch.randn(d, h, w, generator=generator)
    rng = np.random.default_rng(n)
    masks = rng.random((n, height, width)) < rng.uniform(0.05, 0.9, size=(n, 1, 1))
    masks[0] = False  # an empty mask
    masks[-1] = True  # a full mask
    pooled = pool_masks(features, masks)
    assert pooled.shape == (n, d)
    assert pooled.dtype == torch.float32
    assert torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled.double(), naive_pool(features, masks), atol=1e-5,
                               rtol=1e-5)
    # The empty mask pools to exactly zero rather than NaN (0 / 0).
    assert torch.equal(pooled[0], torch.zeros(d))


def test_pool_masks_single_pixel_reads_the_upsampled_map():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 7, 5, generator=generator)
    height, width = 50, 33
    up = F.interpolate(features[None], size=(height, width), mode="bilinear",
                       align_corners=False)[0]
    points = [(0, 0), (49, 32), (13, 20), (25, 1)]
    masks = np.zeros((len(points), height, width), dtype=bool)
    for i, (y, x) in enumerate(points):
        masks[i, y, x] = True
    pooled = pool_masks(features, masks)
    for i, (y, x) in enumerate(points):
        torch.testing.assert_close(pooled[i], up[:, y, x], atol=1e-5, rtol=1e-5)


def test_pool_masks_no_masks():
    features = torch.randn(6, 4, 3)
    pooled = pool_masks(features, np.zeros((0, 20, 10), dtype=bool))
    assert pooled.shape == (0, 6)


def test_pool_masks_chunking_does_not_mix_masks():
    """Mask i is a single column; after chunking each row must still be its own column."""
    d, h, w, height, width = 3, 4, 5, 8, 200
    features = torch.randn(d, h, w, generator=torch.Generator().manual_seed(0))
    masks = np.zeros((width, height, width), dtype=bool)
    for i in range(width):
        masks[i, :, i] = True
    pooled = pool_masks(features, masks).double()
    torch.testing.assert_close(pooled, naive_pool(features, masks), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(pooled[_MASK_CHUNK - 1], pooled[_MASK_CHUNK])


# --------------------------------------------------------------------------- thresholded_softmax


def test_thresholded_softmax_background_column_and_rule():
    generator = torch.Generator().manual_seed(1)
    similarity = torch.rand(200, 4, generator=generator) * 2 - 1
    threshold, temperature = 0.3, 0.05
    probs = thresholded_softmax(similarity, threshold, temperature)
    assert probs.shape == (200, 5)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(200))
    assert (probs >= 0).all()
    below = similarity.max(dim=1).values < threshold
    assert below.any() and (~below).any()  # both cases are exercised
    assert torch.equal(probs.argmax(dim=1) == 0, below)
    # Column 0 is the threshold itself, as one more logit.
    for row in (0, 17, 199):
        expected = expected_probs(similarity[row].tolist(), threshold, temperature)
        np.testing.assert_allclose(probs[row].numpy(), expected, rtol=1e-5, atol=1e-6)
    # The winning class column is class index + 1.
    above = ~below
    assert torch.equal(probs[above].argmax(dim=1), similarity[above].argmax(dim=1) + 1)


def test_thresholded_softmax_temperature_sharpens():
    similarity = torch.tensor([[0.6, 0.2]])
    soft = thresholded_softmax(similarity, 0.5, 1.0)
    sharp = thresholded_softmax(similarity, 0.5, 0.01)
    assert soft[0, 1] < 0.5 < sharp[0, 1]
    assert sharp[0, 1] > 0.99


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs",
    [{"overlap": "biggest"}, {"overlap": ""}, {"uncovered": "zero"}, {"uncovered": "Ignore"},
     {"temperature": 0.0}, {"temperature": -0.1}, {"min_confidence": -0.1},
     {"min_confidence": 1.5}],
)
def test_annotator_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        AnnotatorConfig(**kwargs)


def test_annotator_config_accepts_every_policy():
    for overlap in OVERLAP_POLICIES:
        for uncovered in UNCOVERED_POLICIES:
            config = AnnotatorConfig(overlap=overlap, uncovered=uncovered, temperature=0.5)
            assert config.to_dict()["overlap"] == overlap


def test_annotator_uses_backend_defaults_unless_configured():
    default = make_annotator()
    assert default.threshold == THRESHOLD and default.temperature == TEMPERATURE
    resolved = default.resolved_config()
    assert resolved["background_threshold"] == THRESHOLD
    assert resolved["temperature"] == TEMPERATURE
    custom = make_annotator(background_threshold=0.2, temperature=0.7)
    assert custom.threshold == 0.2 and custom.temperature == 0.7


def test_annotator_needs_one_text_vector_per_class():
    with pytest.raises(ValueError):
        Annotator(FakeBackend(), TEXT, [3, 7, 9], BACKGROUND)


# --------------------------------------------------------------------------- naming


def three_region_scene() -> tuple[MaskProposals, torch.Tensor]:
    """6 x 16 image; columns 0-3 point at A, 4-7 at B, 8-11 nowhere, 12-15 no mask.

    The feature map is at image size, so upsampling is the identity and each
    mask's pooled feature is exactly its region's direction.
    """
    height, width = 6, 16
    features = torch.zeros(3, height, width)
    features[:, :, 0:4] = A[:, None, None] * 2.0  # magnitude must not matter
    features[:, :, 4:8] = B[:, None, None]
    features[:, :, 8:12] = NOWHERE[:, None, None]
    features[:, :, 12:16] = (A + B)[:, None, None]  # would be ambiguous, but no mask
    masks = np.zeros((3, height, width), dtype=bool)
    masks[0, :, 0:4] = True
    masks[1, :, 4:8] = True
    masks[2, :, 8:12] = True
    return MaskProposals.from_masks(masks), features


def test_hand_computed_names_with_background():
    proposals, features = three_region_scene()
    annotation = make_annotator().annotate(proposals, features)
    assert annotation.mask_classes.tolist() == [3, 7, BACKGROUND]
    label = annotation.label
    assert label.dtype == np.uint8 and label.shape == (6, 16)
    assert (label[:, 0:4] == 3).all()
    assert (label[:, 4:8] == 7).all()
    assert (label[:, 8:12] == BACKGROUND).all()
    assert (label[:, 12:16] == IGNORE_INDEX).all()  # uncovered="ignore"

    # Confidence: the mask's max probability, everywhere inside it; 0 where no mask.
    p_class = expected_probs([1.0, 0.0]).max()  # A and B masks: same numbers
    p_background = expected_probs([0.0, 0.0]).max()
    np.testing.assert_allclose(annotation.mask_confidence, [p_class, p_class, p_background],
                               rtol=1e-5)
    confidence = annotation.confidence
    assert confidence.dtype == np.float32
    for index in range(3):
        np.testing.assert_array_equal(confidence[proposals.masks[index]],
                                      annotation.mask_confidence[index])
    assert (confidence[:, 12:16] == 0).all()


def test_hand_computed_names_without_background_class():
    proposals, features = three_region_scene()
    annotation = make_annotator(background_id=None, uncovered="background",
                                unknown="ignore").annotate(proposals, features)
    assert annotation.mask_classes.tolist() == [3, 7, IGNORE_INDEX]
    assert (annotation.label[:, 0:4] == 3).all()
    assert (annotation.label[:, 4:8] == 7).all()
    # Below threshold with no background class -> ignore; uncovered cannot become background.
    assert (annotation.label[:, 8:] == IGNORE_INDEX).all()


def test_threshold_decides_between_class_and_background():
    height, width = 4, 4
    direction = F.normalize(0.6 * A + 0.8 * NOWHERE, dim=0)  # cosine 0.6 with A
    features = direction[:, None, None].expand(3, height, width).clone()
    proposals = MaskProposals.from_masks(np.ones((1, height, width), dtype=bool))
    assert make_annotator(background_threshold=0.5).annotate(
        proposals, features).mask_classes.tolist() == [3]
    assert make_annotator(background_threshold=0.7).annotate(
        proposals, features).mask_classes.tolist() == [BACKGROUND]


def test_uncovered_background_policy():
    proposals, features = three_region_scene()
    annotation = make_annotator(uncovered="background").annotate(proposals, features)
    assert (annotation.label[:, 12:16] == BACKGROUND).all()
    assert (annotation.label[:, 0:4] == 3).all()
    assert (annotation.confidence[:, 12:16] == 0).all()


# --------------------------------------------------------------------------- overlaps


def nested_scene() -> MaskProposals:
    """A 10 x 10 mask containing a 3 x 3 one (rows/cols 2-4); listed big first."""
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0] = True
    masks[1, 2:5, 2:5] = True
    return MaskProposals.from_masks(masks)


SMALL = (slice(2, 5), slice(2, 5))


def nested_pooled(big_similarity: float, small_similarity: float) -> torch.Tensor:
    """Pooled features: the big mask points at A, the small at B, with given cosines."""
    def towards(direction, cosine):
        return cosine * direction + float(np.sqrt(1 - cosine**2)) * NOWHERE

    return torch.stack([towards(A, big_similarity), towards(B, small_similarity)])


@pytest.mark.parametrize("reverse", [False, True])
def test_small_on_top(reverse):
    proposals = nested_scene()
    pooled = nested_pooled(0.9, 0.9)
    if reverse:  # the input order must not matter, only the areas
        proposals = proposals.subset(np.array([1, 0]))
        pooled = pooled.flip(0)
    label = make_annotator(overlap="small-on-top").annotate_pooled(proposals, pooled).label
    assert (label[SMALL] == 7).all()
    outside = np.ones((10, 10), dtype=bool)
    outside[SMALL] = False
    assert (label[outside] == 3).all()


@pytest.mark.parametrize("reverse", [False, True])
def test_large_on_top(reverse):
    proposals = nested_scene()
    pooled = nested_pooled(0.9, 0.9)
    if reverse:
        proposals = proposals.subset(np.array([1, 0]))
        pooled = pooled.flip(0)
    label = make_annotator(overlap="large-on-top").annotate_pooled(proposals, pooled).label
    assert (label == 3).all()


@pytest.mark.parametrize(
    ("big", "small", "inside"), [(0.95, 0.6, 3), (0.6, 0.95, 7)],
)
def test_confidence_policy_more_confident_wins(big, small, inside):
    proposals = nested_scene()
    annotation = make_annotator(overlap="confidence").annotate_pooled(
        proposals, nested_pooled(big, small))
    assert annotation.label[SMALL].tolist() == [[inside] * 3] * 3
    assert annotation.label[0, 0] == 3
    expected = max(expected_probs([big, 0.0]).max(), expected_probs([0.0, small]).max())
    np.testing.assert_allclose(annotation.confidence[SMALL], expected, rtol=1e-5)


def test_average_policy_is_the_mean_distribution():
    proposals = nested_scene()
    big, small = 0.9, 0.7
    annotation = make_annotator(overlap="average").annotate_pooled(
        proposals, nested_pooled(big, small))
    p_big = expected_probs([big, 0.0])
    p_small = expected_probs([0.0, small])
    mean = (p_big + p_small) / 2
    # Inside the small mask: argmax of the mean distribution, its max as the confidence.
    assert annotation.label[3, 3] == [BACKGROUND, 3, 7][int(mean.argmax())]
    np.testing.assert_allclose(annotation.confidence[3, 3], mean.max(), rtol=1e-5)
    # The two nested masks disagree, so the averaged confidence is lower than either mask's.
    assert annotation.confidence[3, 3] < min(p_big.max(), p_small.max())
    # Outside it: the big mask alone.
    assert annotation.label[0, 0] == 3
    np.testing.assert_allclose(annotation.confidence[0, 0], p_big.max(), rtol=1e-5)


def test_average_policy_can_differ_from_either_mask():
    """Two identical masks, one barely A and one clearly B: the mean distribution decides."""
    masks = np.ones((2, 5, 5), dtype=bool)
    proposals = MaskProposals.from_masks(masks)
    pooled = nested_pooled(0.55, 0.95)
    annotation = make_annotator(overlap="average").annotate_pooled(proposals, pooled)
    assert (annotation.label == 7).all()
    mean = (expected_probs([0.55, 0.0]) + expected_probs([0.0, 0.95])) / 2
    np.testing.assert_allclose(annotation.confidence, mean.max(), rtol=1e-5)


def test_average_policy_uncovered_pixels():
    masks = np.zeros((1, 4, 6), dtype=bool)
    masks[0, :, :3] = True
    proposals = MaskProposals.from_masks(masks)
    pooled = A[None].clone()
    ignore = make_annotator(overlap="average").annotate_pooled(proposals, pooled)
    assert (ignore.label[:, :3] == 3).all() and (ignore.label[:, 3:] == IGNORE_INDEX).all()
    assert (ignore.confidence[:, 3:] == 0).all()
    filled = make_annotator(overlap="average", uncovered="background").annotate_pooled(
        proposals, pooled)
    assert (filled.label[:, 3:] == BACKGROUND).all()


def test_min_confidence_ignores_unsure_pixels_but_keeps_their_confidence():
    """Nested masks that disagree: the averaged inside is less sure than the outside."""
    proposals = nested_scene()
    pooled = nested_pooled(0.9, 0.7)
    full = make_annotator(overlap="average").annotate_pooled(proposals, pooled)
    inside, outside = full.confidence[3, 3], full.confidence[0, 0]
    assert inside < outside
    cut = (inside + outside) / 2
    sure = make_annotator(overlap="average", min_confidence=cut).annotate_pooled(
        proposals, pooled)
    unsure = full.confidence < cut
    assert unsure.any() and (~unsure).any()
    assert (sure.label[unsure] == IGNORE_INDEX).all()
    assert (sure.label[~unsure] == full.label[~unsure]).all()
    np.testing.assert_array_equal(sure.confidence, full.confidence)


def test_min_confidence_leaves_the_uncovered_rule_alone():
    masks = np.zeros((1, 4, 6), dtype=bool)
    masks[0, :, :3] = True
    proposals = MaskProposals.from_masks(masks)
    filled = make_annotator(overlap="average", uncovered="background",
                            min_confidence=0.01).annotate_pooled(proposals, A[None].clone())
    assert (filled.label[:, 3:] == BACKGROUND).all()  # confidence 0, yet background as asked
    assert (filled.label[:, :3] == 3).all()


def test_average_policy_with_many_masks_across_chunks():
    """More masks than one chunk: every pixel covered by exactly one mask keeps its class."""
    n, width = _MASK_CHUNK + 6, _MASK_CHUNK + 6
    masks = np.zeros((n, 2, width), dtype=bool)
    for i in range(n):
        masks[i, :, i] = True
    proposals = MaskProposals.from_masks(masks)
    pooled = torch.stack([A if i % 2 == 0 else B for i in range(n)])
    label = make_annotator(overlap="average").annotate_pooled(proposals, pooled).label
    expected = np.array([3 if i % 2 == 0 else 7 for i in range(width)])
    assert (label == expected[None]).all()


# --------------------------------------------------------------------------- no masks


@pytest.mark.parametrize("overlap", OVERLAP_POLICIES)
def test_zero_proposals(overlap):
    proposals = MaskProposals.empty(5, 7)
    features = torch.randn(3, 2, 2)
    ignore = make_annotator(overlap=overlap).annotate(proposals, features)
    assert ignore.label.shape == (5, 7) and ignore.label.dtype == np.uint8
    assert (ignore.label == IGNORE_INDEX).all()
    assert (ignore.confidence == 0).all()
    assert ignore.mask_classes.shape == (0,) and ignore.mask_confidence.shape == (0,)
    filled = make_annotator(overlap=overlap, uncovered="background").annotate(
        proposals, features)
    assert (filled.label == BACKGROUND).all()
    no_background = make_annotator(background_id=None, uncovered="background").annotate(
        proposals, features)
    assert (no_background.label == IGNORE_INDEX).all()


def test_best_class_policy_names_every_mask_when_there_is_no_background():
    proposals, features = three_region_scene()
    annotation = make_annotator(background_id=None, unknown="best-class",
                                overlap="small-on-top").annotate(proposals, features)
    # The third mask matches nothing above the threshold: it still gets a real class id,
    # and its confidence is a proper probability over the classes only.
    assert annotation.mask_classes[:2].tolist() == [3, 7]
    assert annotation.mask_classes[2] in CLASS_IDS
    assert (annotation.label[:, 8:12] == annotation.mask_classes[2]).all()
    assert 0 < annotation.mask_confidence[2] <= 1
    # With a background class the policy changes nothing.
    with_background = make_annotator(unknown="best-class").annotate(proposals, features)
    assert with_background.mask_classes[2] == BACKGROUND


def test_unknown_policy_is_validated():
    with pytest.raises(ValueError, match="unknown"):
        AnnotatorConfig(unknown="guess")
