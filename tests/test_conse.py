"""The ConSE backend with the real packaged EfficientNet-Lite0 and MiniLM weights.

The backend is built once for the module (encoding the 1000 ImageNet label
sentences is the slow part); variants of it that differ only in a scoring or
size attribute are shallow copies sharing its networks.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F  # noqa: N812

from zsplg.labeling.annotate import pool_masks
from zsplg.vl import VL_MODELS, build_vl_model, resolve_vl_name
from zsplg.vl.conse import ConSEBackend, imagenet_label_sentences
from zsplg.vl.efficientnet_lite import (
    MEAN,
    STD,
    WeightsNotFoundError,
    build_efficientnet_lite,
    convert_lukemelas_state_dict,
    packaged_weights_path,
)
from zsplg.vl.prompts import class_prompts

pytestmark = pytest.mark.slow

CAT_INDICES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
LABELS = ["cat", "car", "boat", "aeroplane"]


@pytest.fixture(scope="module")
def backend() -> ConSEBackend:
    return build_vl_model("conse", device="cpu")


@pytest.fixture(scope="module")
def chelsea_features(backend) -> torch.Tensor:
    return backend.encode_image(skimage.data.chelsea())


@pytest.fixture(scope="module")
def label_text(backend) -> torch.Tensor:
    return backend.encode_text([class_prompts(name) for name in LABELS])


def whole_image_pooled(features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return pool_masks(features, np.ones((1, height, width), dtype=bool))


# --------------------------------------------------------------------------- the classifier


def test_lukemelas_keys_convert_onto_timm_exactly():
    path = packaged_weights_path("efficientnet-lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert any(key.startswith("_blocks.") for key in state)  # lukemelas layout on disk
    model = build_efficientnet_lite("efficientnet-lite0", weights=None)
    converted = convert_lukemelas_state_dict(state, model)
    expected = model.state_dict()
    assert set(converted) == set(expected)
    for key, value in converted.items():
        assert value.shape == expected[key].shape, key


def test_packaged_weights_classify_chelsea_as_a_cat():
    model = build_efficientnet_lite("efficientnet-lite0")  # strict load inside
    assert not model.training
    image = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1).float().div(255)
    x = F.interpolate(image[None], size=(224, 224), mode="bilinear", antialias=True,
                      align_corners=False)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (1, 1000)
    top5 = set(logits[0].topk(5).indices.tolist())
    assert top5 & CAT_INDICES, top5
    assert int(logits[0].argmax()) in CAT_INDICES


def test_timm_layout_weights_file_loads(tmp_path):
    reference = build_efficientnet_lite("efficientnet-lite0", weights=None)
    path = tmp_path / "timm_layout.pth"
    torch.save(reference.state_dict(), path)
    loaded = build_efficientnet_lite("efficientnet-lite0", weights=str(path))
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nowhere" / "lite0.pth"
    with pytest.raises(WeightsNotFoundError, match="lite0.pth") as info:
        build_efficientnet_lite("efficientnet-lite0", weights=missing)
    assert str(missing) in str(info.value)
    with pytest.raises(WeightsNotFoundError) as info:
        ConSEBackend(weights=str(missing))
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("variant", ["efficientnet-lite9", "efficientnet-b0", ""])
def test_unknown_variant(variant):
    with pytest.raises(ValueError, match="variant"):
        build_efficientnet_lite(variant, weights=None)
    with pytest.raises(ValueError, match="variant"):
        ConSEBackend(variant=variant)
    with pytest.raises(ValueError, match="variant"):
        packaged_weights_path(variant)


def test_unknown_scoring():
    with pytest.raises(ValueError, match="scoring"):
        ConSEBackend(scoring="cosine")


def test_backend_names():
    assert resolve_vl_name("auto") == "conse"
    assert set(VL_MODELS) >= {"conse", "conse-lite0"}
    with pytest.raises(ValueError, match="clip"):
        resolve_vl_name("clip")
    with pytest.raises(ValueError):
        build_vl_model("clip")


def test_imagenet_label_sentences():
    lemmas = imagenet_label_sentences("lemmas")
    gloss = imagenet_label_sentences("gloss")
    assert len(lemmas) == len(gloss) == 1000
    assert "tabby" in lemmas[281]
    assert gloss[281].startswith(lemmas[281][:-1].rstrip("."))
    assert len(gloss[281]) > len(lemmas[281])
    with pytest.raises(ValueError):
        imagenet_label_sentences("synonyms")


# --------------------------------------------------------------------------- the backend


def test_backend_config(backend):
    config = backend.config()
    assert config["name"] == "conse"
    assert config["variant"] == "efficientnet-lite0"
    assert config["input_size"] == 448
    assert config["scoring"] == "transfer"
    assert config["text_model"] == "all-MiniLM-L6-v2"
    assert backend.label_vectors.shape == (1000, 384)


def expected_grid(height: int, width: int, input_size: int) -> tuple[int, int]:
    scale = input_size / max(height, width)
    return max(1, round(height * scale / 32)), max(1, round(width * scale / 32))


def test_encode_image_shape_chelsea(chelsea_features):
    assert chelsea_features.shape == (1280, *expected_grid(300, 451, 448))
    assert chelsea_features.shape == (1280, 9, 14)
    assert chelsea_features.dtype == torch.float32
    assert torch.isfinite(chelsea_features).all()


@pytest.mark.parametrize(
    ("height", "width"),
    [(96, 160), (160, 96), (64, 64), (500, 40), (7, 9)],
)
def test_encode_image_shape(backend, height, width):
    small = copy.copy(backend)  # same networks, cheaper input size
    small.input_size = 224
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    features = small.encode_image(image)
    assert features.shape == (1280, *expected_grid(height, width, 224))


def test_encode_image_does_not_modify_input(backend):
    image = skimage.data.chelsea()[:64, :96].copy()
    before = image.copy()
    small = copy.copy(backend)
    small.input_size = 64
    small.encode_image(image)
    np.testing.assert_array_equal(image, before)


def test_encode_text(backend, label_text):
    assert label_text.shape == (len(LABELS), 384)
    torch.testing.assert_close(label_text.norm(dim=1), torch.ones(len(LABELS)))
    # One prompt group per class, averaged: a group of one is that sentence's vector.
    single = backend.encode_text([["a photo of a cat."], ["a photo of a car.", "a car."]])
    assert single.shape == (2, 384)
    direct = backend.text_encoder.encode(["a photo of a cat."])[0]
    torch.testing.assert_close(single[0], F.normalize(direct, dim=0), atol=1e-5, rtol=1e-5)
    pair = F.normalize(backend.text_encoder.encode(["a photo of a car.", "a car."]).mean(0),
                       dim=0)
    torch.testing.assert_close(single[1], pair, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scoring", ["transfer", "mixture"])
def test_class_probabilities_shape_and_normalisation(backend, chelsea_features, label_text,
                                                     scoring):
    scorer = copy.copy(backend)
    scorer.scoring = scoring
    d, h, w = chelsea_features.shape
    rng = np.random.default_rng(0)
    masks = rng.random((6, 300, 451)) < 0.5
    masks[0] = True
    pooled = pool_masks(chelsea_features, masks)
    probs = scorer.class_probabilities(pooled, label_text, backend.default_threshold,
                                       backend.default_temperature)
    assert probs.shape == (6, len(LABELS) + 1)
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(6), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scoring", ["transfer", "mixture"])
def test_chelsea_is_a_cat(backend, chelsea_features, label_text, scoring):
    scorer = copy.copy(backend)
    scorer.scoring = scoring
    pooled = whole_image_pooled(chelsea_features, 300, 451)
    probs = scorer.class_probabilities(pooled, label_text, backend.default_threshold,
                                       backend.default_temperature)[0]
    cat = probs[1 + LABELS.index("cat")]
    for other in ("car", "boat", "aeroplane"):
        assert cat > probs[1 + LABELS.index(other)], (other, probs.tolist())
    assert int(probs.argmax()) == 1 + LABELS.index("cat"), probs.tolist()


def test_mixture_text_space(backend, chelsea_features, label_text):
    pooled = whole_image_pooled(chelsea_features, 300, 451)
    embedded = backend.to_text_space(pooled)
    assert embedded.shape == (1, 384)
    torch.testing.assert_close(embedded.norm(dim=1), torch.ones(1))
    similarity = (embedded @ label_text.T)[0]
    assert int(similarity.argmax()) == LABELS.index("cat")


def test_mixture_is_a_real_constructor_option():
    """The constructor accepts scoring="mixture" (checked before any weights load)."""
    with pytest.raises(WeightsNotFoundError):
        ConSEBackend(scoring="mixture", weights="/nonexistent/weights.pth")
