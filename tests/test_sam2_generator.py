"""SAM 2.1 everything mode (the fast tier): equal to sam2's SAM2AutomaticMaskGenerator.

No SAM 2.1 weights exist offline, so the models here are tiny random SAM 2.1 models built
by sam2's own `build_sam2` from its Hiera-T hydra config with smaller sizes. As in
test_sam_generator, the random mask decoder is wrapped to add a prompt-localised logit
bump (so that masks have contours and the filters have something to decide); both
generators run the very same model. The restructured decoder is compared with the
library's decoder separately, on the unwrapped model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_clip_gem import tiny_clip
from test_sam_generator import _available_memory_bytes, assert_same, photo
from torch.nn import functional
from typer.testing import CliRunner

from zsplg.masks import build_mask_generator, resolve_mask_generator_name
from zsplg.masks.base import MaskProposals
from zsplg.masks.sam import SamCheckpointError
from zsplg.masks.sam2 import (
    Sam2CheckpointError,
    Sam2MaskGenerator,
    build_sam2_generator,
    build_sam2_model,
    load_sam2_checkpoint,
)
from zsplg.masks.sam2.decoder import decode_sam2_point_prompts
from zsplg.masks.sam2.decoder import supports_fast_path as _supported

IMG_SIZE = 256  # the tiny model's input side: 16 x 16 embeddings, 64 x 64 mask logits

# a 5-block Hiera (its q-pooling blocks must not be global) and 32-wide heads
TINY = [
    f"++model.image_size={IMG_SIZE}",
    "++model.image_encoder.trunk.embed_dim=8",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.d_model=32",
    "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "++model.memory_attention.d_model=32",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.d_model=32",
    "++model.memory_attention.layer.dim_feedforward=32",
    "++model.memory_attention.layer.self_attention.embedding_dim=32",
    "++model.memory_attention.layer.self_attention.feat_sizes=[16,16]",
    "++model.memory_attention.layer.cross_attention.embedding_dim=32",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[16,16]",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "++model.memory_encoder.out_dim=16",
    "++model.memory_encoder.position_encoding.num_pos_feats=16",
    "++model.memory_encoder.fuser.layer.dim=32",
    "++model.memory_encoder.fuser.num_layers=1",
]

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              # sam2's transforms (the reference's too) are built with torch.jit.script
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")]


class LocalisedDecoder(torch.nn.Module):
    """sam2's random MaskDecoder plus a prompt-localised logit bump and IoU shift."""

    def __init__(self, decoder: torch.nn.Module, positive: torch.nn.Embedding,
                 strength: float = 24.0) -> None:
        super().__init__()
        self.decoder = decoder
        self.positive = positive
        self.strength = strength
        # SAM2Base.forward_image projects the high-resolution features with these
        self.conv_s0, self.conv_s1 = decoder.conv_s0, decoder.conv_s1

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings,
                dense_prompt_embeddings, multimask_output, repeat_image,
                high_res_features=None):
        masks, iou, tokens, objects = self.decoder(
            image_embeddings=image_embeddings, image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings, multimask_output=multimask_output,
            repeat_image=repeat_image, high_res_features=high_res_features)
        point_pe = sparse_prompt_embeddings[:, 0] - self.positive.weight  # PE of the point
        bump = torch.einsum("bc,chw->bhw", point_pe, image_pe[0]) / (point_pe.shape[1] / 2)
        bump = functional.interpolate(bump[:, None], size=masks.shape[-2:], mode="bilinear",
                                      align_corners=False)
        levels = torch.tensor([0.7, 0.5, 0.3])[: masks.shape[1]]
        masks = masks + self.strength * (bump - levels[None, :, None, None])
        iou = iou + 0.2 * torch.tanh(point_pe[:, :1])  # some points score higher
        return masks, iou, tokens, objects


def tiny_sam2(seed: int = 0, localised: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_sam2_model("tiny", TINY)
    with torch.no_grad():  # random logits are small: give the masks real contours
        for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(50.0)
            mlp.layers[-1].bias.mul_(50.0)
    if localised:
        model.sam_mask_decoder = LocalisedDecoder(
            model.sam_mask_decoder, model.sam_prompt_encoder.point_embeddings[1])
    return model.eval()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_sam2()


def reference(model, image: np.ndarray, **settings) -> list[dict]:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    generator = SAM2AutomaticMaskGenerator(model, output_mode="binary_mask", **settings)
    # the library's predictor assumes the 1024 px models' feature sizes
    side = model.sam_image_embedding_size
    generator.predictor._bb_feat_sizes = [(4 * side, 4 * side), (2 * side, 2 * side),
                                          (side, side)]
    return generator.generate(image)


def ours(model, **settings) -> Sam2MaskGenerator:
    return build_sam2_generator(model=model, device="cpu", **settings)


SETTINGS = {
    # image smaller than the 64 x 64 low-res logits' resize target; every filter active
    "small-image": ((96, 128), "astronaut",
                    dict(points_per_side=8, pred_iou_thresh=0.5, stability_score_thresh=0.6,
                         box_nms_thresh=0.7)),
    # another shape; no IoU filter, narrower stability offset
    "large-image": ((150, 200), "coffee",
                    dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.8,
                         stability_score_offset=0.5, box_nms_thresh=0.5)),
    # no stability filter (boxes of every IoU survivor), hard NMS
    "no-stability": ((60, 50), "chelsea",
                     dict(points_per_side=6, pred_iou_thresh=0.5, stability_score_thresh=0.0,
                          box_nms_thresh=0.3)),
}


@pytest.mark.parametrize("case", sorted(SETTINGS))
def test_matches_reference(model, case):
    shape, which, settings = SETTINGS[case]
    image = photo(*shape, which)
    records = reference(model, image, points_per_batch=64, **settings)
    result = ours(model, points_per_batch=64, **settings).generate_detailed(image)
    stats = result.stats
    assert len(records) >= 3, stats
    assert_same(records, result)
    assert stats["masks"] < stats["candidates"]
    assert stats["upsampled"] <= stats["after_nms"] + 2  # only survivors went full size
    if settings["pred_iou_thresh"] > 0:
        assert stats["after_iou"] < stats["candidates"]


def test_exact_fallback_and_full_resolution_paths_agree(model):
    """Candidates the low-res arithmetic cannot decide take the reference's path."""
    image = photo(96, 128)
    settings = SETTINGS["small-image"][2]
    records = reference(model, image, points_per_batch=64, **settings)
    generator = ours(model, points_per_batch=64, **settings)
    generator.tolerance = 0.05  # pretend float rounding were large: many undecided pixels
    mixed = generator.generate_detailed(image)
    assert mixed.stats["upsampled"] > mixed.stats["after_nms"]
    assert_same(records, mixed)
    generator.low_res_prefilter = False
    full = generator.generate_detailed(image)
    assert full.stats["upsampled"] == full.stats["after_iou"] + full.stats["after_nms"]
    assert_same(records, full)


def test_batching_changes_only_rounding(model):
    image = photo(96, 128)
    settings = SETTINGS["small-image"][2]
    records = reference(model, image, points_per_batch=16, **settings)
    result = ours(model, points_per_batch=None, **settings).generate_detailed(image)
    assert_same(records, result, exact=False)


def test_restructured_decoder_matches_library():
    """The CPU decoder path equals sam2's MaskDecoder up to float rounding."""
    model = tiny_sam2(seed=3, localised=False)
    generator = ours(model)
    features, _ = generator._encode(photo(64, 80))
    encoder, decoder = model.sam_prompt_encoder, model.sam_mask_decoder
    points = torch.rand(7, 1, 2) * IMG_SIZE
    sparse, dense = encoder(points=(points, torch.ones(7, 1, dtype=torch.int)), boxes=None,
                            masks=None)
    high_res = list(features["high_res_feats"])
    image_pe = encoder.get_dense_pe()
    assert _supported(decoder, features["image_embed"], image_pe, dense, high_res)
    with torch.inference_mode():
        masks, iou = decode_sam2_point_prompts(decoder, features["image_embed"], image_pe,
                                               sparse, dense, high_res)
        ref_masks, ref_iou, _, _ = decoder(
            image_embeddings=features["image_embed"], image_pe=image_pe,
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=True, repeat_image=True, high_res_features=high_res)
    assert masks.shape == ref_masks.shape == (7, 3, 64, 64)
    scale = float(ref_masks.abs().max())
    torch.testing.assert_close(masks, ref_masks, atol=1e-4 * scale, rtol=1e-4)
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)
    # a wrapped decoder is simply called
    wrapped = LocalisedDecoder(decoder, encoder.point_embeddings[1])
    assert not _supported(wrapped, features["image_embed"], image_pe, dense, high_res)


def test_proposals_structure_and_config(model):
    image = photo(96, 128)
    generator = ours(model, **SETTINGS["small-image"][2])
    proposals = generator.generate(image)
    assert isinstance(proposals, MaskProposals) and len(proposals) > 0
    assert proposals.masks.dtype == np.bool_ and proposals.masks.shape[1:] == (96, 128)
    assert proposals.scores.dtype == np.float32 and proposals.areas.dtype == np.int64
    np.testing.assert_array_equal(proposals.areas, proposals.masks.sum(axis=(1, 2)))
    assert generator.name == "sam2"

    config = generator.config()
    for key in ("variant", "checkpoint", "image_size", "points_per_side", "pred_iou_thresh",
                "stability_score_thresh", "stability_score_offset", "box_nms_thresh",
                "precision", "model_sha256"):
        assert key in config
    assert config["name"] == "sam2" and config["image_size"] == IMG_SIZE
    assert config["precision"] == "fp32"
    assert config == ours(model, **SETTINGS["small-image"][2]).config()
    assert config != ours(model, points_per_side=9).config()


def test_nothing_survives_and_validation(model):
    result = ours(model, points_per_side=4, pred_iou_thresh=1.5).generate_detailed(
        photo(64, 80))
    assert len(result.proposals) == 0 and result.proposals.masks.shape == (0, 64, 80)
    with pytest.raises(ValueError, match="variant"):
        build_sam2_generator("large", model=model)
    with pytest.raises(ValueError, match="points_per_side"):
        ours(model, points_per_side=0)
    with pytest.raises(ValueError, match="uint8"):
        ours(model).generate(np.zeros((32, 32, 3), dtype=np.float32))


def test_names_and_auto_order(tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    monkeypatch.setenv("ZSPLG_WEIGHTS_DIR", str(weights))
    assert resolve_mask_generator_name("sam2") == "sam2"
    assert resolve_mask_generator_name("sam2.1-small") == "sam2.1-small"
    assert resolve_mask_generator_name("auto", "/x/sam2.1_hiera_small.pt") == "sam2.1-small"
    assert resolve_mask_generator_name("sam", "/x/sam2.1_hiera_tiny.pt") == "sam2.1-tiny"
    assert resolve_mask_generator_name("sam2", "/x/my_weights.pt") == "sam2"
    assert resolve_mask_generator_name("auto", "/x/sam_vit_h_4b8939.pth") == "sam-vit-h"
    assert resolve_mask_generator_name("auto") == "superpixel"
    weights.mkdir()
    (weights / "sam2.1_hiera_tiny.pt").write_bytes(b"")
    assert resolve_mask_generator_name("auto") == "sam2.1-tiny"
    (weights / "sam2.1_hiera_small.pt").write_bytes(b"")
    assert resolve_mask_generator_name("auto") == "sam2.1-small"
    (weights / "sam_vit_b_01ec64.pth").write_bytes(b"")
    assert resolve_mask_generator_name("auto") == "sam-vit-b"  # SAM first: see masks/


def test_missing_weights_name_the_fetch_command(tmp_path, monkeypatch):
    from zsplg.runtime.weights import WeightsMissingError

    monkeypatch.setenv("ZSPLG_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(WeightsMissingError, match="zsplg weights fetch sam2.1-hiera-tiny"):
        build_mask_generator("sam2", device="cpu")
    with pytest.raises(WeightsMissingError, match="--sam-checkpoint"):
        build_mask_generator("sam2.1-small", device="cpu")


def test_bad_checkpoints_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(Sam2CheckpointError, match="garbage.pt"):
        load_sam2_checkpoint("tiny", garbage)

    tiny = tmp_path / "tiny.pt"
    torch.save({"model": tiny_sam2(localised=False).state_dict()}, tiny)
    with pytest.raises(SamCheckpointError, match=r"tiny\.pt.*not a SAM 2.1 Hiera-Tiny"):
        load_sam2_checkpoint("tiny", tiny)

    sam1 = tmp_path / "sam_vit_b.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}, sam1)
    with pytest.raises(Sam2CheckpointError, match="looks like a SAM \\(v1\\) checkpoint"):
        load_sam2_checkpoint("tiny", sam1)

    small = tmp_path / "looks_small.pt"
    blocks = {f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(16)}
    torch.save({"model": {**blocks, "no_obj_embed_spatial": torch.zeros(1)}}, small)
    with pytest.raises(Sam2CheckpointError, match="looks like a SAM 2.1 Hiera-Small"):
        load_sam2_checkpoint("tiny", small)


def test_label_cli_runs_end_to_end_on_tiny_sam2(tmp_path, monkeypatch, model):
    """`zsplg label --masks sam2 --sam-checkpoint FILE`: the name, the checkpoint and the
    CLI's settings reach the SAM 2.1 generator. No real weights exist, so loading the file
    returns the tiny model, and the CLIP backend is a tiny random one."""
    import zsplg.labeling.labeller as labeling
    import zsplg.masks.sam2.generator as sam2_module
    from zsplg.cli import app
    from zsplg.vl.clip_gem import build_clip_backend

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(photo(96, 128, "astronaut")).save(images / "astronaut.png")
    Image.fromarray(photo(80, 80, "coffee")).save(images / "coffee.jpg")
    (tmp_path / "classes.txt").write_text("background\nperson\ncup\n")
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    checkpoint.write_bytes(b"stand-in")
    loaded = []

    def fake_load(variant, path):
        loaded.append((variant, str(path)))
        return model

    monkeypatch.setattr(sam2_module, "load_sam2_checkpoint", fake_load)
    clip = build_clip_backend(model=tiny_clip(), device="cpu", input_size=64, gem_depth=2)
    monkeypatch.setattr(labeling, "build_vl_model", lambda *args, **kwargs: clip)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "label", str(images), "--classes", str(tmp_path / "classes.txt"), "--out", str(out),
        "--masks", "sam2", "--sam-checkpoint", str(checkpoint), "--points-per-side", "6",
        "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert loaded == [("tiny", str(checkpoint))]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished"
    masks = run["backends"]["masks"]
    assert masks["name"] == "sam2" and masks["variant"] == "tiny"
    assert masks["checkpoint"] == checkpoint.name and masks["points_per_side"] == 6
    for key, size in (("astronaut", (96, 128)), ("coffee", (80, 80))):
        label = Image.open(out / "labels" / f"{key}.png")
        assert label.size == (size[1], size[0])
        assert set(np.unique(np.array(label))) <= {0, 1, 2, 255}


@pytest.mark.slow
def test_full_size_hiera_tiny_checkpoint_loads_strictly(tmp_path):
    """A full-size random Hiera-Tiny saved as the official files are ({"model": state
    dict}) loads strictly through our loader (and through sam2's own checkpoint loader),
    so real sam2.1_hiera_tiny.pt keys and shapes fit; one tensor fewer fails clearly.
    It proves the layout and key names, not that any real file's weights are right."""
    if _available_memory_bytes() < 2 << 30:
        pytest.skip("needs ~2 GB of free memory for a full-size Hiera-Tiny")
    from sam2.build_sam import _load_checkpoint

    torch.manual_seed(0)
    original = build_sam2_model("tiny")
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": original.state_dict()}, path)
    expected = original.image_encoder.trunk.patch_embed.proj.weight.detach().clone()
    _load_checkpoint(original, path)  # the library's own loader accepts the file
    del original

    generator = build_mask_generator("auto", sam_checkpoint=path, device="cpu")
    assert isinstance(generator, Sam2MaskGenerator)
    assert torch.equal(generator.model.image_encoder.trunk.patch_embed.proj.weight, expected)
    config = generator.config()
    assert config["checkpoint"] == path.name and config["variant"] == "tiny"
    assert config["image_size"] == 1024 and "model_sha256" not in config
    del generator

    with pytest.raises(Sam2CheckpointError, match="looks like a SAM 2.1 Hiera-Tiny"):
        load_sam2_checkpoint("small", path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["model"].pop("sam_mask_decoder.iou_token.weight")
    torch.save(state, path)
    del state
    with pytest.raises(Sam2CheckpointError, match="1 missing tensors"):
        load_sam2_checkpoint("tiny", path)
