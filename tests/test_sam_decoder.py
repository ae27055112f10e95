"""The restructured SAM mask decoder equals `MaskDecoder.forward`, up to float rounding."""

from __future__ import annotations

from functools import partial

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

from zsplg.masks.sam import build_sam_generator
from zsplg.masks.sam import decoder as sam_decoder
from zsplg.masks.sam.decoder import decode_point_prompts

IMG_SIZE = 256


# The test machine's cores are shared: one thread avoids OpenMP contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_parts(dim: int = 32, depth: int = 2, grid: int = 16, seed: int = 0,
               ) -> tuple[PromptEncoder, MaskDecoder]:
    torch.manual_seed(seed)
    prompt_encoder = PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                   input_image_size=(16 * grid, 16 * grid), mask_in_chans=4)
    decoder = MaskDecoder(
        num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=32,
        transformer=TwoWayTransformer(depth=depth, embedding_dim=dim, mlp_dim=64, num_heads=2))
    with torch.no_grad():  # random logits are ~0.03: give the masks real contours
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(50.0)
            mlp.layers[-1].bias.mul_(50.0)
        for norm in decoder.modules():  # non-trivial affine norms
            if isinstance(norm, torch.nn.LayerNorm) or type(norm).__name__ == "LayerNorm2d":
                norm.weight.add_(0.3 * torch.randn_like(norm.weight))
                norm.bias.add_(0.3 * torch.randn_like(norm.bias))
    return prompt_encoder.eval(), decoder.eval()


def inputs(prompt_encoder: PromptEncoder, points: int, seed: int = 1,
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    dim = prompt_encoder.embed_dim
    h, w = prompt_encoder.image_embedding_size
    side = prompt_encoder.input_image_size[0]
    embeddings = torch.randn(1, dim, h, w, generator=generator)
    coords = torch.rand(points, 1, 2, generator=generator) * side
    labels = torch.ones(points, 1, dtype=torch.int)
    sparse, dense = prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    return embeddings, prompt_encoder.get_dense_pe(), sparse, dense


def reference(decoder, embeddings, image_pe, sparse, dense, multimask_output=True):
    return decoder(image_embeddings=embeddings, image_pe=image_pe,
                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                   multimask_output=multimask_output)


def assert_close(expected: tuple[torch.Tensor, torch.Tensor],
                 actual: tuple[torch.Tensor, torch.Tensor]) -> None:
    (masks, iou), (our_masks, our_iou) = expected, actual
    assert our_masks.shape == masks.shape and our_iou.shape == iou.shape
    scale = float(masks.abs().max())
    torch.testing.assert_close(our_masks, masks, atol=1e-4 * scale, rtol=0)
    torch.testing.assert_close(our_iou, iou, atol=1e-4 * max(float(iou.abs().max()), 1.0),
                               rtol=0)
    assert ((our_masks > 0) != (masks > 0)).float().mean() < 1e-4
    multi = masks.shape[1] > 1
    if multi:
        assert (our_masks.argmax(1) != masks.argmax(1)).float().mean() < 1e-4


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("multimask_output", [True, False])
def test_tiny_decoder_matches_forward(depth, multimask_output):
    prompt_encoder, decoder = tiny_parts(depth=depth)
    with torch.no_grad():
        args = inputs(prompt_encoder, points=12)
        expected = reference(decoder, *args, multimask_output=multimask_output)
        actual = decode_point_prompts(decoder, *args, multimask_output=multimask_output)
    assert expected[1].shape == (12, 3 if multimask_output else 1)
    assert float(expected[0].abs().max()) > 1.0  # the masks have contours
    assert_close(expected, actual)


def test_two_point_prompts_and_autograd_free_inputs():
    """Any number of sparse tokens (here point + negative point + padding)."""
    prompt_encoder, decoder = tiny_parts()
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(1, 32, 16, 16, generator=generator)
    coords = torch.rand(5, 2, 2, generator=generator) * IMG_SIZE
    labels = torch.tensor([[1, 0]] * 5, dtype=torch.int)
    with torch.no_grad():
        sparse, dense = prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        image_pe = prompt_encoder.get_dense_pe()
        assert_close(reference(decoder, embeddings, image_pe, sparse, dense),
                     decode_point_prompts(decoder, embeddings, image_pe, sparse, dense))


class Wrapper(torch.nn.Module):
    def __init__(self, decoder: MaskDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, **kwargs):
        return self.decoder(**kwargs)


def test_unsupported_inputs_call_the_module(monkeypatch):
    prompt_encoder, decoder = tiny_parts()
    calls = []
    monkeypatch.setattr(sam_decoder, "_predict_masks",
                        lambda *a: calls.append(1) or pytest.fail("fast path taken"))
    with torch.no_grad():
        embeddings, image_pe, sparse, dense = inputs(prompt_encoder, points=4)
        # a wrapper module
        wrapped = decode_point_prompts(Wrapper(decoder), embeddings, image_pe, sparse, dense)
        torch.testing.assert_close(wrapped, reference(decoder, embeddings, image_pe, sparse,
                                                      dense), atol=0, rtol=0)
        # a transformer with a subclassed attention layer (a patched or adapted model)
        from segment_anything.modeling.transformer import Attention

        class PatchedAttention(Attention):
            pass

        _, patched = tiny_parts()
        patched.load_state_dict(decoder.state_dict())
        original = patched.transformer.layers[0].self_attn
        patched.transformer.layers[0].self_attn = PatchedAttention(
            original.embedding_dim, original.num_heads)
        patched.transformer.layers[0].self_attn.load_state_dict(original.state_dict())
        torch.testing.assert_close(
            decode_point_prompts(patched, embeddings, image_pe, sparse, dense),
            reference(patched, embeddings, image_pe, sparse, dense), atol=0, rtol=0)
        # a different dense embedding per prompt
        per_prompt = dense + torch.randn(dense.shape)
        torch.testing.assert_close(
            decode_point_prompts(decoder, embeddings, image_pe, sparse, per_prompt),
            reference(decoder, embeddings, image_pe, sparse, per_prompt), atol=0, rtol=0)
    assert not calls


@pytest.mark.slow
def test_full_size_vit_b_decoder_matches_forward():
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]().eval()
    prompt_encoder, decoder = sam.prompt_encoder, sam.mask_decoder
    del sam
    with torch.no_grad():
        args = inputs(prompt_encoder, points=64)
        assert args[0].shape == (1, 256, 64, 64)
        expected = reference(decoder, *args)
        actual = decode_point_prompts(decoder, *args)
    assert expected[0].shape == (64, 3, 256, 256)
    assert_close(expected, actual)


def tiny_sam(seed: int = 0) -> Sam:
    prompt_encoder, decoder = tiny_parts(seed=seed)
    torch.manual_seed(seed)
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=64, img_size=IMG_SIZE, mlp_ratio=2, num_heads=2, patch_size=16,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=(1,), window_size=4, out_chans=32),
        prompt_encoder=prompt_encoder, mask_decoder=decoder,
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def test_generator_with_a_plain_decoder_matches_reference(monkeypatch):
    """The whole everything-mode pipeline, through the fast decoder, equals the reference."""
    model = tiny_sam()
    image = resize(skimage.data.astronaut(), (96, 128), anti_aliasing=True,
                   preserve_range=True).astype(np.uint8)
    # a random decoder barely reacts to its prompt: nearly the same mask for every point,
    # so NMS is off (IoU > 1 never holds) to keep one mask per point, distinct at its edges
    settings = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.9,
                    box_nms_thresh=1.0)
    records = SamAutomaticMaskGenerator(model, output_mode="binary_mask",
                                        **settings).generate(image)
    fast_calls = []
    real = sam_decoder._predict_masks
    monkeypatch.setattr(sam_decoder, "_predict_masks",
                        lambda *a: fast_calls.append(1) or real(*a))
    result = build_sam_generator(model=model, device="cpu", long_side=IMG_SIZE,
                                 **settings).generate_detailed(image)
    assert fast_calls
    assert len(records) >= 32
    assert len(result.proposals) == len(records)
    ref_masks = np.stack([r["segmentation"] for r in records])
    ref_scores = np.array([r["predicted_iou"] for r in records], dtype=np.float32)
    ref_stability = np.array([r["stability_score"] for r in records], dtype=np.float32)
    ref_areas = np.array([r["area"] for r in records], dtype=np.int64)
    mine = np.lexsort((result.proposals.areas, -result.proposals.scores))
    theirs = np.lexsort((ref_areas, -ref_scores))
    assert np.mean(result.proposals.masks[mine] != ref_masks[theirs]) < 1e-4
    np.testing.assert_allclose(result.proposals.scores[mine], ref_scores[theirs], atol=1e-5)
    np.testing.assert_allclose(result.stability[mine], ref_stability[theirs], atol=1e-3)
    assert np.abs(result.proposals.areas[mine] - ref_areas[theirs]).max() <= 2
