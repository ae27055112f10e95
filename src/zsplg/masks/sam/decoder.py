"""SAM's mask decoder for a batch of prompts on one image, restructured for the CPU.

`decode_point_prompts` returns what `MaskDecoder.forward` returns, up to float rounding
(the products are summed in another order), for B prompts on ONE image embedding with
the same dense prompt embedding for every prompt (no mask input), which is SAM
everything mode. The official decoder repeats the 64 x 64 x 256
image embedding B times and projects it again and again; here:

* the first transformer layer's image-side projections (token->image keys and values,
  image->token queries) do not depend on the prompt: they are computed once;
* attention between the few (T = 7) tokens and the N = 4096 image tokens is low rank, so
  per head h the big projections are moved to the token side by associativity:
  token->image logits  q_h (X W_k,h + b_k,h)^T = (q_h W_k,h) X^T + const-per-row
  (a constant along the softmax axis drops out), values p_h (X W_v,h + b_v,h) =
  (p_h X) W_v,h + b_v,h (the rows of p_h sum to one); image->token logits
  (X W_q,h + b_q,h) k_h^T = X (W_q,h k_h^T) + b_q,h k_h^T, and its output projection
  out_proj(p V) = sum_h p_h (V_h W_o,h) + b_o is applied to the T value rows, not the N rows.
  A product over the image tokens then costs N x C x (H T) = 4096 x 256 x 56 instead of
  N x C x C/2 per projection;
* the residual add of image->token attention is fused into the product (`baddbmm`);
* the mask upscaling (two 2x2 stride-2 transposed convolutions) runs as matrix products in
  channels-last layout, where LayerNorm2d is a plain layer norm;
* on the CPU the prompts go a few at a time (see `_CHUNK`), and the chunks are spread over
  single-threaded worker threads instead of splitting every op over OpenMP threads (see
  `map_prompt_chunks`); on a GPU a few hundred at a time (`_GPU_CHUNK`).

The small token-side parts (self-attention, norms, MLPs, heads) run the decoder's own
modules. Any other decoder (a subclass, a wrapper, a different transformer) or input
(several images, per-prompt dense embeddings) is simply called.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from segment_anything.modeling import MaskDecoder, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock
from torch.nn import functional

__all__ = ["decode_point_prompts", "is_standard_transformer", "map_prompt_chunks",
           "two_way_transformer"]

_T = TypeVar("_T")

# prompts decoded together: few enough that the per-prompt image-sized intermediates stay
# below glibc's mmap threshold and are reused from the heap instead of being mapped and
# page-faulted afresh every time
_CHUNK = 4
_UPSCALE_CHUNK = 2
# on a GPU a step of a few hundred prompts already fills the device, while one step over
# every prompt holds the whole batch's image-sized intermediates at once (1024 prompts:
# over 20 GiB for the upscaling's channels-last activations, measured 26.9 GiB peak)
_GPU_CHUNK = 256
_GPU_UPSCALE_CHUNK = 64


def decode_point_prompts(decoder: torch.nn.Module, image_embeddings: torch.Tensor,
                         image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                         multimask_output: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`decoder(...)`'s (masks, iou_pred) for B prompts on one image, up to float rounding.

    The everything mode decodes every grid point against the same image, so the image's
    share of the work is done once instead of once per prompt."""
    if sparse.shape[0] == 0 or not _supported(decoder, image_embeddings, image_pe, dense):
        return decoder(image_embeddings=image_embeddings, image_pe=image_pe,
                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                       multimask_output=multimask_output)
    masks, iou_pred = _predict_masks(decoder, image_embeddings, image_pe, sparse, dense[:1])
    mask_slice = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, mask_slice], iou_pred[:, mask_slice]


def is_standard_transformer(transformer: torch.nn.Module, transformer_type: type,
                            block_type: type, attention_type: type) -> bool:
    """Whether a two-way transformer is built only of the library's own classes (the
    types passed: segment-anything's or sam2's), so the restructured decoder computes
    what it would (up to float rounding); a subclass or a patched module gets the
    library's path. Public because SAM 2.1's decoder (zsplg.masks.sam2.decoder) checks
    its transformer with it."""
    if type(transformer) is not transformer_type or type(
            transformer.final_attn_token_to_image) is not attention_type:
        return False
    return all(type(layer) is block_type and all(
        type(attn) is attention_type for attn in (
            layer.self_attn, layer.cross_attn_token_to_image, layer.cross_attn_image_to_token))
        for layer in transformer.layers)


def _supported(decoder: torch.nn.Module, image_embeddings: torch.Tensor,
               image_pe: torch.Tensor, dense: torch.Tensor) -> bool:
    if type(decoder) is not MaskDecoder or not is_standard_transformer(
            decoder.transformer, TwoWayTransformer, TwoWayAttentionBlock, Attention):
        return False
    if image_embeddings.shape[0] != 1 or image_pe.shape[0] != 1 or dense.dim() != 4:
        return False
    # one dense embedding for all prompts: an expanded tensor, or equal slices
    return (dense.shape[0] == 1 or dense.stride(0) == 0
            or bool((dense == dense[:1]).all()))


def _predict_masks(decoder: MaskDecoder, image_embeddings: torch.Tensor,
                   image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    src = image_embeddings + dense  # (1, C, h, w): shared by every prompt
    _, c, h, w = src.shape
    batch = tokens.shape[0]

    src = src.flatten(2).transpose(1, 2)[0]
    image_pe = image_pe.flatten(2).transpose(1, 2)[0]
    layers = _upscaling_layers(decoder)
    shared: dict = {}  # the image's projections, computed once

    def decode(part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        hs, keys = two_way_transformer(decoder.transformer, src, image_pe, tokens[part], shared)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1: (1 + decoder.num_mask_tokens), :]
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp
                                in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
        if layers is not None:
            masks = _upscale_masks(layers, keys, hyper_in, h, w)
        else:
            b = keys.shape[0]
            upscaled = decoder.output_upscaling(keys.transpose(1, 2).view(b, c, h, w))
            masks = (hyper_in @ upscaled.flatten(2)).view(b, -1, *upscaled.shape[2:])
        return masks, decoder.iou_prediction_head(iou_token_out)

    chunk = _CHUNK if src.device.type == "cpu" else _GPU_CHUNK
    parts = [slice(begin, begin + chunk) for begin in range(0, batch, chunk)]
    masks, iou_pred = zip(*map_prompt_chunks(decode, parts, src.device), strict=True)
    return torch.cat(masks), torch.cat(iou_pred)


def map_prompt_chunks(fn: Callable[[slice], _T], parts: Sequence[slice],
                      device: torch.device) -> list[_T]:
    """[fn(part) for part in parts], on the CPU spread over torch.get_num_threads()
    single-threaded workers (the caller's thread and helper threads).

    Why: a chunk of prompts is hundreds of small ops, and an op split over OpenMP threads
    ends in a barrier that waits for every thread. On an idle machine that is cheap; on a
    busy one (more runnable threads than cores) each barrier waits for a descheduled
    thread while its partner spins, and the decoder measured 3-4x slower with 2 threads
    than with 1. Independent chunks need no barrier: each worker decodes whole chunks
    with one intra-op thread and never waits for the other. Results are bitwise those of
    the serial loop (a chunk's ops do not depend on the thread count; checked by the
    tests). `fn` must be safe to call from several threads; the first part runs alone
    first so that whatever it caches (the shared image projections) is there before the
    others start. Public because SAM 2.1's decoder (zsplg.masks.sam2.decoder) uses it."""
    threads = torch.get_num_threads()
    if (device.type != "cpu" or threads < 2 or len(parts) < 2
            or torch.is_autocast_enabled("cpu")):
        return [fn(part) for part in parts]
    results: list = [None] * len(parts)
    pending = iter(range(1, len(parts)))
    lock = threading.Lock()
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def drain() -> None:
        while True:
            with lock:
                index = next(pending, None)
            if index is None:
                return
            results[index] = fn(parts[index])

    def helper() -> None:  # grad and inference mode are per thread: the caller's
        torch.set_num_threads(1)
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            drain()

    torch.set_num_threads(1)
    try:
        results[0] = fn(parts[0])
        helpers = min(threads, len(parts) - 1) - 1
        with ThreadPoolExecutor(max_workers=max(helpers, 1)) as pool:
            futures = [pool.submit(helper) for _ in range(helpers)]
            drain()
            for future in futures:
                future.result()
    finally:
        torch.set_num_threads(threads)
    return results


def two_way_transformer(transformer: TwoWayTransformer, keys: torch.Tensor,
                        key_pe: torch.Tensor, point_embedding: torch.Tensor, shared: dict,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """TwoWayTransformer.forward; `keys` (N, C) and `key_pe` (N, C) shared by all prompts;
    `shared` caches projections of the shared image across calls. Public because SAM
    2.1's transformer has SAM's structure and module names, so its decoder
    (zsplg.masks.sam2.decoder) runs this same path."""
    queries, query_pe = point_embedding, point_embedding
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)

        k = keys + key_pe
        queries = queries + _token_to_image(layer.cross_attn_token_to_image,
                                            queries + query_pe, k, keys, shared)
        queries = layer.norm2(queries)
        queries = layer.norm3(queries + layer.mlp(queries))

        keys = _image_to_token(layer.cross_attn_image_to_token, k, queries + query_pe,
                               queries, keys, shared)
        keys = layer.norm4(keys)

    attn_out = _token_to_image(transformer.final_attn_token_to_image,
                               queries + point_embedding, keys + key_pe, keys, shared)
    queries = transformer.norm_final_attn(queries + attn_out)
    if keys.dim() == 2:  # depth 0: still shared
        keys = keys.expand(queries.shape[0], -1, -1)
    return queries, keys


def _heads(attn: Attention) -> tuple[int, int]:
    return attn.num_heads, attn.internal_dim // attn.num_heads


def _token_to_image(attn: Attention, q: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor, shared: dict) -> torch.Tensor:
    """attn(q=q, k=k, v=v) for tokens q (B, T, C) and image tokens k, v: (N, C) or (B, N, C)."""
    batch, tokens, _ = q.shape
    heads, dim = _heads(attn)
    q = attn.q_proj(q).view(batch, tokens, heads, dim)
    if k.dim() == 2:  # shared image: project it once, attend per head
        n = k.shape[0]
        if (attn, "kv") not in shared:
            shared[attn, "kv"] = (attn.k_proj(k).view(n, heads, dim).permute(1, 2, 0),
                                  attn.v_proj(v).view(n, heads, dim).transpose(0, 1))
        k, v = shared[attn, "kv"]  # (H, d, N), (H, N, d)
        q = q.permute(2, 0, 1, 3).reshape(heads, batch * tokens, dim)
        logits = torch.bmm(q, k) / math.sqrt(dim)
        out = torch.bmm(torch.softmax(logits, dim=-1), v)  # (H, B T, d)
        out = out.view(heads, batch, tokens, dim).permute(1, 2, 0, 3)
        return attn.out_proj(out.reshape(batch, tokens, heads * dim))
    weight = attn.k_proj.weight.view(heads, dim, -1)  # (H, d, C)
    # per head: q_h W_k,h, scaled; q_h . b_k,h is constant along the softmax axis
    qk = torch.einsum("bthd,hdc->bhtc", q, weight / math.sqrt(dim)).flatten(1, 2)
    logits = torch.bmm(qk, k.transpose(1, 2))  # (B, H T, N)
    pv = torch.bmm(torch.softmax(logits, dim=-1), v)  # (B, H T, C)
    out = torch.einsum("bhtc,hdc->bthd", pv.view(batch, heads, tokens, -1),
                       attn.v_proj.weight.view(heads, dim, -1))
    out = out + attn.v_proj.bias.view(heads, dim)
    return attn.out_proj(out.reshape(batch, tokens, heads * dim))


def _image_to_token(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    residual: torch.Tensor, shared: dict) -> torch.Tensor:
    """residual + attn(q=q, k=k, v=v) for image tokens q, residual: (N, C) or (B, N, C),
    and tokens k, v (B, T, C); returns (B, N, C)."""
    batch, tokens, _ = k.shape
    heads, dim = _heads(attn)
    k = attn.k_proj(k).view(batch, tokens, heads, dim)
    # the logits are laid out (B, H, T, N): the softmax over T then runs along contiguous N
    if q.dim() == 2:  # shared image: project the queries once
        n = q.shape[0]
        if (attn, "q") not in shared:
            shared[attn, "q"] = attn.q_proj(q).view(n, heads, dim).permute(1, 2, 0)
        q = shared[attn, "q"]  # (H, d, N)
        k = k.permute(2, 0, 1, 3).reshape(heads, batch * tokens, dim)
        logits = torch.bmm(k, q) / math.sqrt(dim)  # (H, B T, N)
        probs = torch.softmax(logits.view(heads, batch, tokens, n), dim=2)
        probs = probs.transpose(0, 1).reshape(batch, heads * tokens, n)
        residual = residual.expand(batch, -1, -1)
    else:
        weight = attn.q_proj.weight.view(heads, dim, -1) / math.sqrt(dim)  # (H, d, C)
        bias = attn.q_proj.bias.view(heads, dim) / math.sqrt(dim)
        kq = torch.einsum("bthd,hdc->bhtc", k, weight).flatten(1, 2)  # (B, H T, C)
        const = torch.einsum("bthd,hd->bht", k, bias).reshape(batch, heads * tokens, 1)
        logits = torch.baddbmm(const, kq, q.transpose(1, 2))  # (B, H T, N)
        probs = torch.softmax(logits.view(batch, heads, tokens, -1), dim=2).flatten(1, 2)
    # out_proj on the value rows: V_h W_o,h, plus b_o / H (each head's weights sum to one)
    v = attn.v_proj(v).view(batch, tokens, heads, dim)
    out_weight = attn.out_proj.weight.view(-1, heads, dim)  # (C, H, d)
    vw = torch.einsum("bthd,chd->bhtc", v, out_weight).flatten(1, 2)
    vw = vw + attn.out_proj.bias / heads
    return torch.baddbmm(residual, probs.transpose(1, 2), vw)


def _upscaling_layers(decoder: MaskDecoder) -> tuple[torch.nn.Module, ...] | None:
    """The output upscaling's layers if it is SAM's (2x2 stride-2 transposed convolutions,
    LayerNorm2d, GELUs), for `_upscale_masks`; else None."""
    layers = tuple(decoder.output_upscaling)
    kinds = (torch.nn.ConvTranspose2d, LayerNorm2d, torch.nn.GELU, torch.nn.ConvTranspose2d,
             torch.nn.GELU)
    if len(layers) != len(kinds) or any(type(m) is not t for m, t in zip(layers, kinds,
                                                                         strict=True)):
        return None
    for conv in (layers[0], layers[3]):
        if (conv.kernel_size != (2, 2) or conv.stride != (2, 2) or conv.padding != (0, 0)
                or conv.output_padding != (0, 0) or conv.dilation != (1, 1)
                or conv.groups != 1 or conv.bias is None):
            return None
    return layers


def _upscale_masks(layers: tuple[torch.nn.Module, ...], keys: torch.Tensor,
                   hyper_in: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """hyper_in @ output_upscaling(keys as B x C x h x w), as (B, K, 4h, 4w).

    A 2x2 stride-2 transposed convolution maps each pixel's channels to its 2 x 2 output
    pixels' channels: one matrix product in channels-last layout, where LayerNorm2d is a plain
    layer norm over the last axis. Output pixel (4i + 2a + c, 4j + 2b + d) comes from input
    pixel (i, j) through sub-pixels (a, b), then (c, d)."""
    conv1, norm, act1, conv2, act2 = layers
    batch = keys.shape[0]

    def conv(x: torch.Tensor, layer: torch.nn.ConvTranspose2d) -> torch.Tensor:
        weight = layer.weight.permute(0, 2, 3, 1).flatten(1)  # (C_in, 2 x 2 x C_out)
        out = torch.addmm(layer.bias.repeat(4), x.reshape(-1, x.shape[-1]), weight)
        return out.view(x.shape[0], -1, layer.out_channels)  # sub-pixels in the row order

    masks = hyper_in.new_empty(batch, hyper_in.shape[1], h, 2, 2, w, 2, 2)
    chunk = _UPSCALE_CHUNK if keys.device.type == "cpu" else _GPU_UPSCALE_CHUNK
    for part in range(0, batch, chunk):
        x = conv(keys[part: part + chunk], conv1)
        x = act1(functional.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps))
        x = act2(conv(x, conv2))  # (b, h w 16, C2)
        x = torch.bmm(hyper_in[part: part + chunk], x.transpose(1, 2))  # (b, K, h w 16)
        masks[part: part + chunk] = x.view(x.shape[0], -1, h, w, 2, 2, 2, 2).permute(
            0, 1, 2, 4, 6, 3, 5, 7)
    return masks.view(batch, -1, 4 * h, 4 * w)
