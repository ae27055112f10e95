"""The CLIP + GEM backend on tiny random open_clip models (no CLIP weights exist here).

What can be checked without real weights: shapes, that the original path is
stock open_clip, GEM's attention-level properties, the dense tokens against
open_clip's own intermediate tokens, the text ensemble, the scoring, and that
OpenAI-layout checkpoints (a plain state dict at full ViT-B/16 size, and a
TorchScript archive like OpenAI's file) load strictly.
"""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from open_clip.model import CLIP
from torch import nn

from zsplg.labeling.annotate import Annotator, pool_masks
from zsplg.masks.base import MaskProposals
from zsplg.vl.clip_gem import (
    ClipGemBackend,
    GemVisionEncoder,
    _is_torchscript_archive,
    build_clip_backend,
    gem_attention,
    load_clip_checkpoint,
    resample_positional_embedding,
    self_self_attention,
    self_self_attention_weights,
    value_path,
)

EMBED = 32
TINY_CFG = {
    "embed_dim": EMBED,
    "quick_gelu": True,  # as OpenAI's ViT-B-16
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "patch_size": 16,
                   "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                 "layers": 2},
}
TINY_NAME = "zsplg-test-tiny-clip"


def tiny_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    cfg = json.loads(json.dumps(TINY_CFG))
    return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"],
                text_cfg=cfg["text_cfg"], quick_gelu=True).eval()


@pytest.fixture(scope="module")
def model() -> CLIP:
    return tiny_clip()


@pytest.fixture(scope="module")
def backend(model) -> ClipGemBackend:
    return build_clip_backend(model=model, device="cpu", input_size=64, gem_depth=2)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(60, 90, 3), dtype=np.uint8)


def block_input(visual, pixels: torch.Tensor, index: int) -> torch.Tensor:
    """open_clip's own tokens (B, 1 + h*w, C) entering block `index` (CLS first)."""
    if index == 0:
        return visual._embeds(pixels)
    out = visual.forward_intermediates(pixels, indices=[index - 1], output_fmt="NLC",
                                       output_extra_tokens=True, intermediates_only=True)
    return torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], 1)


# --------------------------------------------------------------------------- the dense map


@pytest.mark.parametrize(("input_size", "grid"), [(64, 4), (96, 6)])
def test_dense_map_shape_at_two_input_sizes(model, image, input_size, grid):
    backend = build_clip_backend(model=model, device="cpu", input_size=input_size, gem_depth=2)
    features = backend.encode_image(image)
    assert features.shape == (EMBED, grid, grid)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()


def test_long_side_resize_keeps_the_aspect_ratio(model, image):
    backend = build_clip_backend(model=model, device="cpu", input_size=96, resize="long-side",
                                 gem_depth=2)
    assert backend.network_size(60, 90) == (64, 96)
    assert backend.encode_image(image).shape == (EMBED, 4, 6)


def test_maskclip_mode_shapes_and_name(model, image):
    backend = build_clip_backend(model=model, dense_mode="maskclip", device="cpu",
                                 input_size=96)
    assert backend.name == "clip-maskclip"
    assert backend.config()["dense_mode"] == "maskclip"
    assert "gem_depth" not in backend.config()
    assert backend.encode_image(image).shape == (EMBED, 6, 6)


@pytest.mark.parametrize("dense_mode", ["gem", "maskclip"])
def test_original_path_is_stock_open_clip(model, dense_mode):
    encoder = GemVisionEncoder(model.visual, dense_mode=dense_mode, depth=2)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        dense, image_embedding, grid = encoder(pixels)
        expected = model.encode_image(pixels)
    assert grid == (4, 4) and dense.shape == (2, 16, EMBED)
    torch.testing.assert_close(image_embedding, expected, atol=1e-5, rtol=0)


def test_gem_tokens_from_open_clip_intermediates(model):
    """depth 1: GEM = ln_post(x + ls_1(ssattn(ln_1(x)))) @ proj with x the last block's
    input as open_clip itself computes it; depth 2 adds the next block's term on top of
    the same start (the GEM path has no MLP)."""
    visual = model.visual
    blocks = visual.transformer.resblocks
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        x2, x1 = block_input(visual, pixels, 2), block_input(visual, pixels, 1)
        term = {i: blocks[i].ls_1(self_self_attention(blocks[i].ln_1(x), blocks[i].attn))
                for i, x in ((2, x2), (1, x1))}
        one = GemVisionEncoder(visual, depth=1)(pixels)[0]
        two = GemVisionEncoder(visual, depth=2)(pixels)[0]
        expected_one = visual.ln_post((x2 + term[2])[:, 1:]) @ visual.proj
        expected_two = visual.ln_post((x1 + term[1] + term[2])[:, 1:]) @ visual.proj
    torch.testing.assert_close(one, expected_one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(two, expected_two, atol=1e-5, rtol=1e-5)
    plain = visual.ln_post(blocks[2](x2)[:, 1:]) @ visual.proj
    assert not torch.allclose(one, plain, atol=1e-3)  # GEM is not the stock patch tokens


def test_maskclip_tokens_are_the_value_path_of_the_last_block(model):
    visual = model.visual
    last = visual.transformer.resblocks[-1]
    pixels = torch.randn(1, 3, 96, 96)
    encoder = GemVisionEncoder(visual, dense_mode="maskclip")
    with torch.no_grad():
        dense = encoder(pixels)[0]
        x, _ = encoder.embed(pixels)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        y = last.ln_1(x)
        c = y.shape[-1]
        v = y @ last.attn.in_proj_weight[2 * c:].T + last.attn.in_proj_bias[2 * c:]
        expected = visual.ln_post(last.attn.out_proj(v)[:, 1:]) @ visual.proj
    torch.testing.assert_close(dense, expected, atol=1e-5, rtol=1e-5)


def test_positional_embedding_resampling_is_cached(model):
    encoder = GemVisionEncoder(model.visual, depth=2)
    assert encoder.positional_embedding((4, 4)) is model.visual.positional_embedding
    table = encoder.positional_embedding((6, 5))
    assert table.shape == (1 + 30, 64)
    assert encoder.positional_embedding((6, 5)) is table
    torch.testing.assert_close(table[0], model.visual.positional_embedding[0].detach())
    # constant grid stays constant under bicubic resampling
    flat = torch.ones(1 + 16, 3)
    torch.testing.assert_close(resample_positional_embedding(flat, (4, 4), (7, 7)),
                               torch.ones(1 + 49, 3))


# --------------------------------------------------------------------------- GEM attention


def test_self_self_attention_rows_sum_to_one():
    x = torch.randn(2, 4, 10, 8)
    weights = self_self_attention_weights(x, 3.0)
    assert weights.shape == (2, 4, 10, 10)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 4, 10))
    assert (weights >= 0).all()
    # symmetric logits: a token is at least as similar to itself as to any other
    assert (weights.argmax(dim=-1) == torch.arange(10)).all()


def test_identical_tokens_give_the_value_path():
    """All tokens equal -> every self-self attention is uniform -> output is v itself."""
    q, k, v = (torch.randn(1, 2, 1, 8).expand(1, 2, 6, 8) for _ in range(3))
    torch.testing.assert_close(gem_attention(q, k, v, 5.0, iterations=2), v)
    attn = nn.MultiheadAttention(16, 2, batch_first=True)
    y = torch.randn(1, 1, 16).expand(3, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(self_self_attention(y, attn), value_path(y, attn))


def test_gem_attention_is_permutation_equivariant():
    """At the attention level (no positional embedding involved) permuting the tokens
    permutes the outputs; in the full ViT the positional embeddings break this."""
    q, k, v = (torch.randn(2, 2, 9, 8) for _ in range(3))
    perm = torch.randperm(9)
    out = gem_attention(q, k, v, 4.0)
    permuted = gem_attention(q[:, :, perm], k[:, :, perm], v[:, :, perm], 4.0)
    torch.testing.assert_close(permuted, out[:, :, perm])
    attn = nn.MultiheadAttention(16, 2, batch_first=True)
    y = torch.randn(2, 9, 16)
    with torch.no_grad():
        torch.testing.assert_close(self_self_attention(y[:, perm], attn),
                                   self_self_attention(y, attn)[:, perm])


def test_invalid_options_are_rejected(model):
    with pytest.raises(ValueError, match="depth"):
        GemVisionEncoder(model.visual, depth=4)  # the tiny ViT has 3 blocks
    with pytest.raises(ValueError, match="dense_mode"):
        build_clip_backend(model=model, dense_mode="sclip", device="cpu")
    with pytest.raises(ValueError, match="resize"):
        build_clip_backend(model=model, device="cpu", resize="pad", gem_depth=2)
    with pytest.raises(ValueError, match="not both"):
        build_clip_backend("x.pt", model=model, device="cpu")


# --------------------------------------------------------------------------- text and scores


def test_text_ensemble_is_the_renormalised_mean(backend, model):
    prompts = [["a photo of a cat.", "a photo of the cat.", "a cat."], ["a photo of a boat."]]
    text = backend.encode_text(prompts)
    assert text.shape == (2, EMBED)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        tokens = open_clip.get_tokenizer("ViT-B-16")(prompts[0])
        each = F.normalize(model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(text[0], F.normalize(each.mean(dim=0), dim=0), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="at least one prompt"):
        backend.encode_text([["a cat."], []])


def test_class_probabilities_rows_sum_to_one(backend):
    text = F.normalize(torch.randn(3, EMBED), dim=-1)
    pooled = torch.cat([torch.randn(4, EMBED), 5 * text[1:2]])
    probs = backend.class_probabilities(pooled, text, backend.default_threshold,
                                        backend.default_temperature)
    assert probs.shape == (5, 4)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))
    assert probs[4].argmax() == 2  # cosine 1 with class 1 (column 2) beats the threshold
    everything_background = backend.class_probabilities(pooled, text, 1.5, 0.01)
    assert (everything_background.argmax(dim=1) == 0).all()


def test_backend_drives_the_annotator(backend, image):
    features = backend.encode_image(image)
    masks = np.zeros((2, 60, 90), dtype=bool)
    masks[0, :30], masks[1, 30:] = True, True
    text = backend.encode_text([["a photo of a cat."], ["a photo of a dog."]])
    annotator = Annotator(backend, text, class_ids=[1, 2], background_id=0)
    annotation = annotator.annotate(MaskProposals.from_masks(masks), features)
    assert annotation.label.shape == (60, 90)
    assert pool_masks(features, masks).shape == (2, EMBED)
    assert annotator.resolved_config()["background_threshold"] == 0.2
    assert backend.config() == {"name": "clip-gem", "model": "ViT-B-16", "weights": None,
                                "dense_mode": "gem", "gem_depth": 2, "gem_iterations": 1,
                                "input_size": 64, "resize": "square", "precision": "fp32"}


# --------------------------------------------------------------------------- checkpoints


def openai_vit_b16_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of OpenAI's ViT-B/16 checkpoint, written out from openai/CLIP's
    model.py naming (independent of open_clip), with the three non-tensor attributes
    its TorchScript state dict carries."""
    shapes: dict[str, tuple[int, ...]] = {
        "positional_embedding": (77, 512), "text_projection": (512, 512), "logit_scale": (),
        "token_embedding.weight": (49408, 512), "ln_final.weight": (512,),
        "ln_final.bias": (512,), "visual.class_embedding": (768,),
        "visual.positional_embedding": (197, 768), "visual.proj": (768, 512),
        "visual.conv1.weight": (768, 3, 16, 16), "visual.ln_pre.weight": (768,),
        "visual.ln_pre.bias": (768,), "visual.ln_post.weight": (768,),
        "visual.ln_post.bias": (768,),
        "input_resolution": (), "context_length": (), "vocab_size": (),
    }
    for prefix, width in (("visual.transformer", 768), ("transformer", 512)):
        for i in range(12):
            block = f"{prefix}.resblocks.{i}."
            shapes.update({
                block + "attn.in_proj_weight": (3 * width, width),
                block + "attn.in_proj_bias": (3 * width,),
                block + "attn.out_proj.weight": (width, width),
                block + "attn.out_proj.bias": (width,),
                block + "ln_1.weight": (width,), block + "ln_1.bias": (width,),
                block + "mlp.c_fc.weight": (4 * width, width),
                block + "mlp.c_fc.bias": (4 * width,),
                block + "mlp.c_proj.weight": (width, 4 * width),
                block + "mlp.c_proj.bias": (width,),
                block + "ln_2.weight": (width,), block + "ln_2.bias": (width,),
            })
    return shapes


def test_full_size_openai_layout_state_dict_loads_strictly(tmp_path):
    """The one full-size build: a random fp16 ViT-B/16 (OpenAI files are fp16) in
    OpenAI's key layout, through build_clip_backend's loader (strict load)."""
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=generator, dtype=torch.float16) * 0.02
             for key, shape in openai_vit_b16_layout().items()}
    state["input_resolution"] = torch.tensor(224)
    state["context_length"] = torch.tensor(77)
    state["vocab_size"] = torch.tensor(49408)
    path = tmp_path / "ViT-B-16.pt"
    torch.save(state, path)
    assert not _is_torchscript_archive(path)
    backend = build_clip_backend(path, device="cpu", input_size=64)  # raises on any mismatch
    loaded = backend.model.state_dict()
    for key in ("visual.conv1.weight", "visual.transformer.resblocks.11.attn.in_proj_weight",
                "token_embedding.weight", "visual.proj", "text_projection"):
        assert torch.equal(loaded[key], state[key].float())
    assert isinstance(backend.model.visual.transformer.resblocks[0].mlp.gelu,
                      open_clip.model.QuickGELU)
    assert backend.weights == str(path) and backend.config()["gem_depth"] == 6
    assert backend.encode_image(np.zeros((32, 32, 3), dtype=np.uint8)).shape == (512, 4, 4)


class _Node(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_as_torchscript(state: dict[str, torch.Tensor], path) -> None:
    """A TorchScript archive whose state dict is `state`, like OpenAI's released files."""
    root = _Node()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if part not in node._modules:
                node.add_module(part, _Node())
            node = node._modules[part]
        node.register_buffer(leaf, value.clone())
    torch.jit.save(torch.jit.script(root), str(path))


@pytest.fixture(scope="module")
def tiny_config_name(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("configs")
    (folder / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(folder / f"{TINY_NAME}.json")
    return TINY_NAME


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_archive_loads_strictly(tmp_path, tiny_config_name):
    source = tiny_clip(seed=3)
    state = {**source.state_dict(), "input_resolution": torch.tensor(64),
             "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}
    path = tmp_path / "tiny.pt"
    save_as_torchscript({k: v.half() for k, v in state.items()}, path)
    assert _is_torchscript_archive(path)
    loaded = load_clip_checkpoint(path, model_name=tiny_config_name)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.half().float())


def test_incomplete_checkpoint_is_refused(tmp_path, tiny_config_name):
    state = tiny_clip().state_dict()
    del state["visual.proj"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="visual.proj"):
        load_clip_checkpoint(path, model_name=tiny_config_name)


def test_missing_checkpoint_names_the_fetch_command(tmp_path, monkeypatch):
    weights = pytest.importorskip("zsplg.runtime.weights")
    monkeypatch.setenv("ZSPLG_WEIGHTS_DIR", str(tmp_path / "empty"))
    with pytest.raises(weights.WeightsMissingError,
                       match="zsplg weights fetch clip-vit-b-16-openai") as info:
        build_clip_backend(device="cpu")
    assert "--clip-checkpoint PATH" in str(info.value)
    with pytest.raises(weights.WeightsMissingError,
                       match="zsplg weights fetch clip-vit-b-16-openai"):
        build_clip_backend(tmp_path / "nowhere.pt", device="cpu")
