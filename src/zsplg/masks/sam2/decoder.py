"""SAM 2's mask decoder for a batch of point prompts on one image, restructured for the CPU.

`decode_sam2_point_prompts` returns what `sam2.modeling.sam.mask_decoder.MaskDecoder`
returns with `multimask_output=True` (masks, predicted IoU; up to float rounding: sums
run in another order) for B prompts on ONE image with the same dense prompt embedding
for every prompt, which is the everything mode. The library repeats the 256 x 64 x 64
image embedding and the two high-resolution feature maps (32 x 256 x 256 and
64 x 128 x 128 for the official models) B times before decoding. Here:

* the two-way transformer runs `zsplg.masks.sam.decoder`'s path, which projects the shared
  image once and moves the big projections to the token side (SAM 2's transformer has
  SAM's structure and module names);
* the upscaling (two 2x2 stride-2 transposed convolutions, each followed by adding a
  high-resolution feature map) runs as matrix products in channels-last layout, with the
  shared feature maps rearranged once into that layout and added by broadcasting, never
  repeated;
* on the CPU the prompts go a few at a time, so that the per-prompt intermediates stay
  small and are reused from the heap, and the chunks are spread over single-threaded
  worker threads (see zsplg.masks.sam.decoder.map_prompt_chunks: on a busy machine,
  ops split over OpenMP threads wait at a barrier for descheduled threads).

Any other decoder (a subclass, no high-resolution features, another upscaling) or input
(several images, per-prompt dense embeddings) is passed to the library's decoder.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from zsplg.masks.sam.decoder import (
    is_standard_transformer,
    map_prompt_chunks,
    two_way_transformer,
)

__all__ = ["decode_sam2_point_prompts", "supports_fast_path"]

_CHUNK = 4  # prompts decoded together on the CPU
# on a GPU: large enough to fill it, small enough that the upscaling's image-sized
# activations (no sub-steps here) stay a few GiB instead of the whole batch's 20+
_GPU_CHUNK = 128


def decode_sam2_point_prompts(decoder: torch.nn.Module, image_embed: torch.Tensor,
                              image_pe: torch.Tensor, sparse: torch.Tensor,
                              dense: torch.Tensor, high_res: list[torch.Tensor],
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(masks (B, 3, 4h, 4w), iou (B, 3)) of the multimask outputs for B point prompts."""
    if sparse.shape[0] == 0 or not supports_fast_path(decoder, image_embed, image_pe, dense,
                                                      high_res):
        masks, iou, _, _ = decoder(
            image_embeddings=image_embed, image_pe=image_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=True,
            repeat_image=sparse.shape[0] > 1, high_res_features=high_res)
        return masks, iou
    masks, iou = _predict_masks(decoder, image_embed, image_pe, sparse, dense[:1], high_res)
    return masks[:, 1:], iou[:, 1:]


def supports_fast_path(decoder: torch.nn.Module, image_embed: torch.Tensor,
                       image_pe: torch.Tensor, dense: torch.Tensor,
                       high_res: list[torch.Tensor]) -> bool:
    """Whether the restructured path computes what `decoder` would: sam2's own
    MaskDecoder and transformer classes, high-resolution features, one image and one
    dense embedding for all prompts. Public so that the tests can check which path a
    decoder takes; anything else goes to the library's decoder."""
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
    from sam2.modeling.sam2_utils import LayerNorm2d

    if type(decoder) is not MaskDecoder or not decoder.use_high_res_features:
        return False
    if not is_standard_transformer(decoder.transformer, TwoWayTransformer,
                                   TwoWayAttentionBlock, Attention):
        return False
    layers = tuple(decoder.output_upscaling)
    if len(layers) != 5 or type(layers[1]) is not LayerNorm2d:
        return False
    for conv in (layers[0], layers[3]):
        if (type(conv) is not torch.nn.ConvTranspose2d or conv.kernel_size != (2, 2)
                or conv.stride != (2, 2) or conv.padding != (0, 0)
                or conv.output_padding != (0, 0) or conv.dilation != (1, 1)
                or conv.groups != 1 or conv.bias is None):
            return False
    if image_embed.shape[0] != 1 or image_pe.shape[0] != 1 or dense.dim() != 4:
        return False
    if len(high_res) != 2 or any(feat.shape[0] != 1 for feat in high_res):
        return False
    return (dense.shape[0] == 1 or dense.stride(0) == 0
            or bool((dense == dense[:1]).all()))


def _predict_masks(decoder: torch.nn.Module, image_embed: torch.Tensor,
                   image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                   high_res: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskDecoder.predict_masks' (masks, iou_pred) for prompts sharing one image."""
    offset = 1 if decoder.pred_obj_scores else 0
    weights = [decoder.iou_token.weight, decoder.mask_tokens.weight]
    if offset:
        weights.insert(0, decoder.obj_score_token.weight)
    output_tokens = torch.cat(weights, dim=0).unsqueeze(0).expand(sparse.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    src = image_embed + dense  # (1, C, h, w), shared by every prompt
    _, c, h, w = src.shape
    src = src.flatten(2).transpose(1, 2)[0]
    pe = image_pe.flatten(2).transpose(1, 2)[0]
    feat_s0, feat_s1 = high_res
    # the high-resolution maps in the row order of the channels-last upscaling below
    s1 = feat_s1[0].view(-1, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(h * w * 4, -1)
    s0 = feat_s0[0].view(-1, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0).reshape(
        h * w * 16, -1)
    dc1, ln1, act1, dc2, act2 = tuple(decoder.output_upscaling)

    shared: dict = {}  # the image's projections, computed once

    def decode(part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        hs, keys = two_way_transformer(decoder.transformer, src, pe, tokens[part], shared)
        mask_tokens_out = hs[:, offset + 1: offset + 1 + decoder.num_mask_tokens, :]
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp
                                in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
        b = keys.shape[0]
        x = _conv(keys, dc1) + s1  # (b, h w 4, C1)
        x = act1(functional.layer_norm(x, (x.shape[-1],), ln1.weight, ln1.bias, ln1.eps))
        x = act2(_conv(x, dc2) + s0)  # (b, h w 16, C0)
        x = torch.bmm(hyper_in, x.transpose(1, 2))  # (b, K, h w 16)
        masks = (x.view(b, -1, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
                 .reshape(b, -1, 4 * h, 4 * w))
        return masks, decoder.iou_prediction_head(hs[:, offset, :])

    batch = tokens.shape[0]
    chunk = _CHUNK if src.device.type == "cpu" else _GPU_CHUNK
    parts = [slice(begin, begin + chunk) for begin in range(0, batch, chunk)]
    masks, iou_pred = zip(*map_prompt_chunks(decode, parts, src.device), strict=True)
    return torch.cat(masks), torch.cat(iou_pred)


def _conv(x: torch.Tensor, layer: torch.nn.ConvTranspose2d) -> torch.Tensor:
    """A 2x2 stride-2 transposed convolution in channels-last layout: (b, n, C_in) ->
    (b, n 4, C_out), each input row followed by its 2 x 2 output pixels in row order."""
    weight = layer.weight.permute(0, 2, 3, 1).flatten(1)  # (C_in, 2 x 2 x C_out)
    out = torch.addmm(layer.bias.repeat(4), x.reshape(-1, x.shape[-1]), weight)
    return out.view(x.shape[0], -1, layer.out_channels)
