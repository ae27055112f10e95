"""Randomly initialised models for the speed and memory benchmarks.

No SAM or CLIP weights can be downloaded where these benchmarks run, and compute and
memory do not depend on weight values, so the figures use full-size random models.
``toy`` SAM keeps everything after the image encoder full-size (prompt encoder, mask
decoder, 1024-px input, 64 x 64 embeddings) and shrinks only the ViT (2 blocks, width
96): the mask pipeline's work and memory are those of the real model, the encoder's
seconds are not. Smoke runs and long CPU memory runs use it.
"""

from __future__ import annotations

from functools import partial

import torch


def random_sam(size: str = "vit_b", seed: int = 0, img_size: int = 1024):
    """A segment-anything ``Sam``: "vit_b" (full size) or "toy" (see the module doc).
    img_size: the toy's input side (smaller: a cheaper smoke run; pass the generator
    ``long_side=img_size`` then)."""
    from segment_anything import sam_model_registry
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(seed)
    if size != "toy":
        return sam_model_registry[size]().eval()
    side = img_size // 16
    encoder = ImageEncoderViT(depth=2, embed_dim=96, img_size=img_size, mlp_ratio=4,
                              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2,
                              patch_size=16, qkv_bias=True, use_rel_pos=True,
                              global_attn_indexes=(1,), window_size=14, out_chans=256)
    return Sam(image_encoder=encoder,
               prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(side, side),
                                            input_image_size=(img_size, img_size),
                                            mask_in_chans=16),
               mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                        transformer=TwoWayTransformer(depth=2, embedding_dim=256,
                                                                      mlp_dim=2048, num_heads=8),
                                        transformer_dim=256, iou_head_depth=3,
                                        iou_head_hidden_dim=256),
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def random_clip(size: str = "vit_b16", seed: int = 0):
    """An open_clip model: "vit_b16" (OpenAI ViT-B/16 architecture, full size) or "toy"
    (the same architecture at 7 layers of width 64, GEM reads the last 6, for smoke runs)."""
    import open_clip

    torch.manual_seed(seed)
    if size != "toy":
        return open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    return CLIP(embed_dim=64,
                vision_cfg=CLIPVisionCfg(layers=7, width=64, head_width=32, patch_size=16,
                                         image_size=224),
                text_cfg=CLIPTextCfg(layers=2, width=64, heads=2, context_length=77,
                                     vocab_size=49408),
                quick_gelu=True).eval()
