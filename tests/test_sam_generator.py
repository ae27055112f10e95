"""SAM everything mode: equal to segment-anything's SamAutomaticMaskGenerator, faster.

No SAM weights exist offline, so the models here are tiny random SAMs built from the
official modules. A random mask decoder barely reacts to its prompt (every point gives
nearly the same mask), so the decoder is wrapped to add a prompt-localised term, as a
trained SAM would produce: the random-Fourier positional encoding makes
<PE(point), PE(pixel)> a bump around the point, cut at three levels for the three
multimask outputs. Both generators run the very same model.
"""

from __future__ import annotations

import sys
import types
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from skimage.transform import resize
from torch.nn import functional

from zsplg.masks.base import MaskProposals
from zsplg.masks.sam import (
    SamCheckpointError,
    SamMaskGenerator,
    build_sam_generator,
    load_sam_checkpoint,
    remove_small_regions,
)

IMG_SIZE = 256  # the tiny encoder's input side: 16 x 16 embeddings, 64 x 64 mask logits


# The test machine's cores are shared: one thread avoids OpenMP contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LocalisedDecoder(torch.nn.Module):
    """The random MaskDecoder plus a prompt-localised logit bump and IoU shift."""

    def __init__(self, decoder: MaskDecoder, positive: torch.nn.Embedding,
                 strength: float = 24.0) -> None:
        super().__init__()
        self.decoder = decoder
        self.positive = positive
        self.strength = strength

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings,
                dense_prompt_embeddings, multimask_output):
        masks, iou = self.decoder(
            image_embeddings=image_embeddings, image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings, multimask_output=multimask_output)
        point_pe = sparse_prompt_embeddings[:, 0] - self.positive.weight  # PE of the point
        bump = torch.einsum("bc,chw->bhw", point_pe, image_pe[0]) / (point_pe.shape[1] / 2)
        bump = functional.interpolate(bump[:, None], size=masks.shape[-2:], mode="bilinear",
                                      align_corners=False)
        levels = torch.tensor([0.7, 0.5, 0.3])[: masks.shape[1]]
        masks = masks + self.strength * (bump - levels[None, :, None, None])
        iou = iou + 0.2 * torch.tanh(point_pe[:, :1])  # some points score higher
        return masks, iou


def tiny_sam(seed: int = 0) -> Sam:
    torch.manual_seed(seed)
    dim, grid = 32, IMG_SIZE // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=64, img_size=IMG_SIZE, mlp_ratio=2, num_heads=2, patch_size=16,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=(1,), window_size=4, out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(IMG_SIZE, IMG_SIZE), mask_in_chans=4),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=3,
            iou_head_hidden_dim=32,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    with torch.no_grad():  # random logits are ~0.03: give the masks real contours
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(50.0)
            mlp.layers[-1].bias.mul_(50.0)
    sam.mask_decoder = LocalisedDecoder(sam.mask_decoder, sam.prompt_encoder.point_embeddings[1])
    return sam.eval()


def photo(height: int, width: int, which: str = "astronaut") -> np.ndarray:
    image = getattr(skimage.data, which)()
    return resize(image, (height, width), anti_aliasing=True,
                  preserve_range=True).astype(np.uint8)


@pytest.fixture(scope="module")
def model() -> Sam:
    return tiny_sam()


def reference(model: Sam, image: np.ndarray, **settings) -> list[dict]:
    return SamAutomaticMaskGenerator(model, output_mode="binary_mask", **settings).generate(image)


def ours(model: Sam, **settings) -> SamMaskGenerator:
    return build_sam_generator(model=model, device="cpu", long_side=IMG_SIZE, **settings)


def assert_same(records: list[dict], result, exact: bool = True) -> None:
    """Masks, predicted IoU, boxes and stability equal the reference's, as sets."""
    assert len(result.proposals) == len(records)
    ref_masks = np.stack([r["segmentation"] for r in records])
    ref_scores = np.array([r["predicted_iou"] for r in records], dtype=np.float32)
    ref_boxes = np.array([r["bbox"] for r in records], dtype=np.int64)  # XYWH
    ref_stability = np.array([r["stability_score"] for r in records], dtype=np.float32)
    ref_areas = np.array([r["area"] for r in records], dtype=np.int64)
    boxes = result.boxes.copy()
    boxes[:, 2:] -= boxes[:, :2]  # XYXY -> XYWH like the reference

    def order(scores, areas):
        return np.lexsort((areas, -scores))

    mine = order(result.proposals.scores, result.proposals.areas)
    theirs = order(ref_scores, ref_areas)
    if exact:
        np.testing.assert_array_equal(result.proposals.masks[mine], ref_masks[theirs])
        np.testing.assert_array_equal(result.proposals.scores[mine], ref_scores[theirs])
        np.testing.assert_array_equal(result.stability[mine], ref_stability[theirs])
    else:
        assert np.mean(result.proposals.masks[mine] != ref_masks[theirs]) < 1e-4
        np.testing.assert_allclose(result.proposals.scores[mine], ref_scores[theirs], atol=1e-5)
        np.testing.assert_allclose(result.stability[mine], ref_stability[theirs], atol=1e-3)
    np.testing.assert_array_equal(result.proposals.areas[mine], ref_areas[theirs])
    np.testing.assert_array_equal(boxes[mine], ref_boxes[theirs])
    # in fact the very same order (NMS order)
    np.testing.assert_array_equal(result.proposals.scores, ref_scores)


SETTINGS = {
    # image downscaled by the second resize; every filter active
    "small-image": ((96, 128), "astronaut",
                    dict(points_per_side=8, pred_iou_thresh=0.03, stability_score_thresh=0.65,
                         box_nms_thresh=0.7)),
    # image upscaled by the second resize; no IoU filter, narrower stability offset
    "large-image": ((240, 320), "coffee",
                    dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.82,
                         stability_score_offset=0.5, box_nms_thresh=0.5)),
    # no stability filter (boxes of every IoU survivor), hard NMS
    "no-stability": ((120, 100), "chelsea",
                     dict(points_per_side=6, pred_iou_thresh=0.03, stability_score_thresh=0.0,
                          box_nms_thresh=0.3)),
}


@pytest.mark.parametrize("case", sorted(SETTINGS))
def test_matches_reference(model, case):
    shape, which, settings = SETTINGS[case]
    image = photo(*shape, which)
    records = reference(model, image, **settings)
    result = ours(model, **settings).generate_detailed(image)
    stats = result.stats
    assert len(records) >= 3, stats
    assert_same(records, result)
    # the filters did something, and only survivors were upsampled (a rare candidate
    # whose decision hinges on a pixel within float rounding of a threshold may join them)
    assert stats["masks"] < stats["candidates"]
    assert stats["upsampled"] <= stats["after_nms"] + 2
    if settings["pred_iou_thresh"] > 0:
        assert stats["after_iou"] < stats["candidates"]


def test_exact_fallback_and_full_resolution_paths_agree(model):
    """The candidates the low-res computation cannot decide take the reference's path."""
    image = photo(96, 128)
    settings = SETTINGS["small-image"][2]
    records = reference(model, image, **settings)
    generator = ours(model, **settings)
    generator.tolerance = 0.05  # pretend float rounding were large: many undecided pixels
    mixed = generator.generate_detailed(image)
    assert mixed.stats["upsampled"] > mixed.stats["after_nms"]  # the fallback ran
    assert_same(records, mixed)
    generator.low_res_prefilter = False  # the reference's full-resolution filters
    full = generator.generate_detailed(image)
    assert full.stats["upsampled"] == full.stats["after_iou"] + full.stats["after_nms"]
    assert_same(records, full)


def test_all_points_in_one_batch(model):
    """Batching changes nothing but (at most) float rounding."""
    image = photo(96, 128)
    settings = SETTINGS["small-image"][2]
    records = reference(model, image, points_per_batch=16, **settings)
    result = ours(model, points_per_batch=64, **settings).generate_detailed(image)  # all 64
    assert_same(records, result, exact=False)


def test_out_of_memory_halves_the_batch(model, monkeypatch):
    """points_per_batch=None decodes everything at once; on OOM it halves and remembers."""
    image = photo(96, 128)
    settings = SETTINGS["small-image"][2]
    records = reference(model, image, **settings)
    decoder = model.mask_decoder
    real_forward = decoder.forward
    sizes = []

    def limited(*args, **kwargs):
        sizes.append(kwargs["sparse_prompt_embeddings"].shape[0])
        if sizes[-1] > 16:
            raise torch.cuda.OutOfMemoryError("pretend")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", limited)
    generator = ours(model, **settings)  # None: 64 points per batch on cpu
    assert_same(records, generator.generate_detailed(image), exact=False)
    assert sizes[:3] == [64, 32, 16] and generator._auto_batch == 16
    sizes.clear()
    generator.generate(image)
    assert set(sizes) == {16}


def test_small_region_removal_matches_reference(model, monkeypatch):
    """min_mask_region_area > 0: the reference's hole/island pass, with scipy for OpenCV."""
    import segment_anything.automatic_mask_generator as amg

    monkeypatch.setitem(sys.modules, "cv2", types.ModuleType("cv2"))  # the reference imports it
    monkeypatch.setattr(amg, "remove_small_regions", remove_small_regions)
    shape, which, settings = SETTINGS["large-image"]
    image = photo(*shape, which)
    records = reference(model, image, min_mask_region_area=60, **settings)
    result = ours(model, min_mask_region_area=60, **settings).generate_detailed(image)
    assert len(records) >= 3
    assert_same(records, result)
    plain = ours(model, **settings).generate(image)
    assert not np.array_equal(plain.masks, result.proposals.masks)  # regions were removed


def test_remove_small_regions():
    mask = np.zeros((12, 12), dtype=bool)
    mask[1:9, 1:9] = True
    mask[4, 4] = False  # a one-pixel hole
    mask[10:12, 10:12] = True  # a four-pixel island
    filled, changed = remove_small_regions(mask, 5, "holes")
    assert changed and filled[4, 4] and filled[10, 10]
    cleaned, changed = remove_small_regions(filled, 5, "islands")
    assert changed and not cleaned[10:12, 10:12].any() and cleaned[1:9, 1:9].all()
    same, changed = remove_small_regions(cleaned, 5, "islands")
    assert not changed and np.array_equal(same, cleaned)
    with pytest.raises(ValueError):
        remove_small_regions(mask, 5, "edges")


def test_proposals_structure_and_config(model):
    image = photo(96, 128)
    generator = ours(model, **SETTINGS["small-image"][2])
    proposals = generator.generate(image)
    assert isinstance(proposals, MaskProposals)
    assert proposals.masks.dtype == np.bool_ and proposals.masks.shape[1:] == (96, 128)
    assert proposals.scores.dtype == np.float32 and proposals.areas.dtype == np.int64
    np.testing.assert_array_equal(proposals.areas, proposals.masks.sum(axis=(1, 2)))
    assert generator.name == "sam"
    detailed = generator.generate_detailed(image)
    np.testing.assert_array_equal(detailed.proposals.masks, proposals.masks)
    assert detailed.boxes.shape == (len(proposals), 4) and detailed.points.shape[1] == 2
    assert not np.isnan(detailed.stability).any()
    assert np.isnan(generator.generate_detailed(image, with_stability=False).stability).all()

    config = generator.config()
    for key in ("variant", "checkpoint", "points_per_side", "pred_iou_thresh",
                "stability_score_thresh", "stability_score_offset", "box_nms_thresh",
                "long_side", "min_mask_region_area", "precision", "model_sha256"):
        assert key in config
    assert config["precision"] == "fp32" and config["long_side"] == IMG_SIZE
    assert config == ours(model, **SETTINGS["small-image"][2]).config()
    assert config != ours(model, points_per_side=9).config()
    assert config["model_sha256"] != ours(tiny_sam(seed=1)).config()["model_sha256"]


def test_nothing_survives(model):
    image = photo(64, 80)
    generator = ours(model, points_per_side=4, pred_iou_thresh=0.99)
    result = generator.generate_detailed(image)
    assert len(result.proposals) == 0
    assert result.proposals.masks.shape == (0, 64, 80)
    assert result.boxes.shape == (0, 4)


def test_validation(model):
    with pytest.raises(ValueError, match="long_side"):
        build_sam_generator(model=model, device="cpu", long_side=IMG_SIZE * 2)
    with pytest.raises(ValueError, match="variant"):
        build_sam_generator(variant="vit_x", model=model)
    generator = ours(model)
    with pytest.raises(ValueError, match="uint8"):
        generator.generate(np.zeros((32, 32, 3), dtype=np.float32))


def test_missing_checkpoint_raises_weights_missing(tmp_path, monkeypatch):
    from zsplg.runtime.weights import WeightsMissingError

    monkeypatch.setenv("ZSPLG_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(WeightsMissingError, match="--sam-checkpoint"):
        build_sam_generator("vit_b")
    with pytest.raises(WeightsMissingError):
        build_sam_generator("vit_h", checkpoint=tmp_path / "nowhere.pth")


def test_bad_checkpoints_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(SamCheckpointError, match="garbage.pth"):
        load_sam_checkpoint("vit_b", garbage)

    tiny = tmp_path / "tiny.pth"
    torch.save(tiny_sam().state_dict(), tiny)
    with pytest.raises(SamCheckpointError, match=r"tiny\.pth.*not a SAM vit_b checkpoint"):
        load_sam_checkpoint("vit_b", tiny)

    looks_large = tmp_path / "large.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16)},
               looks_large)
    with pytest.raises(SamCheckpointError, match="looks like a SAM vit_l checkpoint"):
        load_sam_checkpoint("vit_b", looks_large)


def _available_memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 40


@pytest.mark.slow
def test_full_size_vit_b_checkpoint_loads_strictly(tmp_path):
    if _available_memory_bytes() < 3 << 30:
        pytest.skip("needs ~3 GB of free memory for a full-size ViT-B")
    torch.manual_seed(0)
    original = sam_model_registry["vit_b"]()
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(original.state_dict(), path)
    expected = original.image_encoder.patch_embed.proj.weight.detach().clone()
    del original

    generator = build_sam_generator("vit_b", checkpoint=path, device="cpu")
    loaded = generator.model
    assert torch.equal(loaded.image_encoder.patch_embed.proj.weight, expected)
    config = generator.config()
    assert config["checkpoint"] == path.name
    assert config["checkpoint_bytes"] == path.stat().st_size
    assert config["variant"] == "vit_b" and "model_sha256" not in config
    del generator, loaded

    state = torch.load(path, map_location="cpu", weights_only=True)
    state.pop("mask_decoder.iou_token.weight")
    torch.save(state, path)
    del state
    with pytest.raises(SamCheckpointError, match="1 missing tensors"):
        load_sam_checkpoint("vit_b", path)
