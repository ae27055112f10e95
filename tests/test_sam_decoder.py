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


# --- the CPU chunks on worker threads (map_prompt_chunks) ---------------------------

@pytest.fixture
def two_torch_threads():
    """Two intra-op threads for one test (the module runs with one): the decoders then
    spread their chunks over two single-threaded workers."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_threaded_chunks_are_bitwise_the_serial_loop(monkeypatch, two_torch_threads):
    """Workers change where a chunk runs, not what it computes: the same bits as one
    thread, in the same order; every chunk runs with one intra-op thread, and the
    caller's thread count, grad and inference mode hold in the workers and after."""
    prompt_encoder, decoder = tiny_parts(depth=2)
    monkeypatch.setattr(sam_decoder, "_CHUNK", 2)
    seen = []
    real = sam_decoder.two_way_transformer

    def recording(*args):
        seen.append((torch.get_num_threads(), torch.is_inference_mode_enabled()))
        return real(*args)

    monkeypatch.setattr(sam_decoder, "two_way_transformer", recording)
    with torch.inference_mode():
        args = inputs(prompt_encoder, points=13)
        torch.set_num_threads(1)
        serial = decode_point_prompts(decoder, *args)
        torch.set_num_threads(2)
        seen.clear()
        threaded = decode_point_prompts(decoder, *args)
        library = reference(decoder, *args)
    assert torch.get_num_threads() == 2
    assert len(seen) == 7 and all(entry == (1, True) for entry in seen)
    assert threaded[0].is_inference() and threaded[1].is_inference()
    for mine, alone in zip(threaded, serial, strict=True):
        assert torch.equal(mine, alone)
    assert_close(library, threaded)
    with torch.no_grad():  # grad mode reaches the workers too
        masks, iou = decode_point_prompts(decoder, *args)
    assert not masks.requires_grad and not iou.requires_grad


def test_map_prompt_chunks_order_errors_and_fallbacks(two_torch_threads):
    import threading

    parts = [slice(i, i + 1) for i in range(9)]
    assert sam_decoder.map_prompt_chunks(lambda p: p.start * 10, parts,
                                         torch.device("cpu")) == [i * 10 for i in range(9)]

    def failing(part: slice) -> int:
        if part.start == 5:
            raise ValueError("chunk 5")
        return part.start

    with pytest.raises(ValueError, match="chunk 5"):
        sam_decoder.map_prompt_chunks(failing, parts, torch.device("cpu"))
    assert torch.get_num_threads() == 2  # restored after a failure too
    # off the CPU (one launch per op: the GPU needs no workers) and with one thread:
    # the plain loop in the caller's thread
    caller = threading.get_ident()
    for device, threads in ((torch.device("meta"), 2), (torch.device("cpu"), 1)):
        torch.set_num_threads(threads)
        threads_seen = sam_decoder.map_prompt_chunks(
            lambda p: (threading.get_ident(), torch.get_num_threads()), parts, device)
        assert threads_seen == [(caller, threads)] * 9


def test_sam2_threaded_chunks_are_bitwise_the_serial_loop(monkeypatch, two_torch_threads):
    """SAM 2.1's restructured decoder spreads its chunks the same way."""
    from sam2.modeling.sam.mask_decoder import MaskDecoder as Sam2MaskDecoder
    from sam2.modeling.sam.transformer import TwoWayTransformer as Sam2Transformer

    from zsplg.masks.sam2 import decoder as sam2_decoder

    dim, grid = 32, 16
    torch.manual_seed(0)
    decoder = Sam2MaskDecoder(
        transformer_dim=dim, iou_head_hidden_dim=32, use_high_res_features=True,
        transformer=Sam2Transformer(depth=2, embedding_dim=dim, num_heads=2, mlp_dim=64)).eval()
    generator = torch.Generator().manual_seed(2)
    embed = torch.randn(1, dim, grid, grid, generator=generator)
    image_pe = torch.randn(1, dim, grid, grid, generator=generator)
    sparse = torch.randn(11, 2, dim, generator=generator)
    dense = torch.randn(1, dim, grid, grid, generator=generator).expand(11, -1, -1, -1)
    high_res = [torch.randn(1, dim // 8, 4 * grid, 4 * grid, generator=generator),
                torch.randn(1, dim // 4, 2 * grid, 2 * grid, generator=generator)]
    assert sam2_decoder.supports_fast_path(decoder, embed, image_pe, dense, high_res)
    monkeypatch.setattr(sam2_decoder, "_CHUNK", 3)
    with torch.inference_mode():
        torch.set_num_threads(1)
        serial = sam2_decoder.decode_sam2_point_prompts(decoder, embed, image_pe, sparse,
                                                        dense, high_res)
        torch.set_num_threads(2)
        threaded = sam2_decoder.decode_sam2_point_prompts(decoder, embed, image_pe, sparse,
                                                          dense, high_res)
        library, library_iou, _, _ = decoder(
            image_embeddings=embed, image_pe=image_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=True, repeat_image=True,
            high_res_features=high_res)
    assert threaded[0].shape == (11, 3, 4 * grid, 4 * grid)
    for mine, alone in zip(threaded, serial, strict=True):
        assert torch.equal(mine, alone)
    torch.testing.assert_close(threaded[0], library,
                               atol=1e-4 * float(library.abs().max()), rtol=0)
    torch.testing.assert_close(threaded[1], library_iou, atol=1e-5, rtol=1e-5)
