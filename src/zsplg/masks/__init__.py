"""Class-agnostic mask generators, chosen by name."""

from __future__ import annotations

from pathlib import Path

from zsplg.masks.base import MaskGenerator, MaskProposals

# name -> SAM variant
_SAM_VARIANTS = {"sam": "vit_b", "sam-vit-b": "vit_b", "sam-vit-l": "vit_l",
                 "sam-vit-h": "vit_h"}
# name -> SAM 2.1 variant (the fast tier)
_SAM2_VARIANTS = {"sam2": "tiny", "sam2.1-tiny": "tiny", "sam2.1-small": "small"}
MASK_GENERATORS = (*_SAM_VARIANTS, *_SAM2_VARIANTS, "superpixel")
# "auto": the first whose weights are present. SAM (the paper's labeller) before the
# SAM 2.1 fast tier: no published comparison shows SAM 2.1 Hiera-T/S everything-mode masks
# at least as good as SAM ViT-B's, so SAM 2.1 is chosen only when no SAM weights are there
_AUTO_ORDER = ("sam-vit-h", "sam-vit-l", "sam-vit-b", "sam2.1-small", "sam2.1-tiny")
_WEIGHTS_OF = {"sam-vit-h": "sam-vit-h", "sam-vit-l": "sam-vit-l", "sam-vit-b": "sam-vit-b",
               "sam2.1-small": "sam2.1-hiera-small", "sam2.1-tiny": "sam2.1-hiera-tiny"}

__all__ = ["MASK_GENERATORS", "MaskGenerator", "MaskProposals", "build_mask_generator",
           "resolve_mask_generator_name"]


def resolve_mask_generator_name(name: str, sam_checkpoint: str | Path | None = None) -> str:
    """"auto" -> SAM when a checkpoint is given (its file name says which SAM or SAM 2.1)
    or one is in the weights cache (the best present, in _AUTO_ORDER), else the offline
    superpixel generator. "sam2" with a checkpoint -> the SAM 2.1 size its name says."""
    if name in ("auto", "sam", "sam2") and sam_checkpoint:
        filename = Path(sam_checkpoint).name
        sam2_name = _sam2_from_filename(filename)
        if sam2_name is not None:
            return sam2_name
        return "sam2" if name == "sam2" else _variant_from_filename(filename)
    if name == "auto":
        from zsplg.runtime.weights import is_present

        for candidate in _AUTO_ORDER:
            if is_present(_WEIGHTS_OF[candidate]):
                return candidate
        return "superpixel"
    if name not in MASK_GENERATORS:
        raise ValueError(f"unknown mask generator {name!r}; choose from auto, "
                         f"{', '.join(MASK_GENERATORS)}")
    return name


def _variant_from_filename(filename: str) -> str:
    """sam_vit_h_4b8939.pth -> sam-vit-h (the official names say their size)."""
    for size in ("h", "l", "b"):
        if f"vit_{size}" in filename or f"vit-{size}" in filename:
            return f"sam-vit-{size}"
    return "sam"


def _sam2_from_filename(filename: str) -> str | None:
    """sam2.1_hiera_small.pt -> sam2.1-small; a SAM 2 file of no known size -> "sam2" (its
    loader then says what the file holds); None for other names."""
    lowered = filename.lower()
    if "hiera" not in lowered and "sam2" not in lowered:
        return None
    for size, tokens in (("tiny", ("tiny", "hiera_t.", "hiera-t.")),
                         ("small", ("small", "hiera_s.", "hiera-s."))):
        if any(token in lowered for token in tokens):
            return f"sam2.1-{size}"
    return "sam2"


def build_mask_generator(name: str = "auto", sam_checkpoint: str | Path | None = None,
                         device: str = "auto", cache: bool | str | Path = False,
                         **options) -> MaskGenerator:
    """cache: False, True (the default cache folder) or a folder: masks stored per
    image content and generator settings, so relabelling skips this stage."""
    name = resolve_mask_generator_name(name, sam_checkpoint)
    if name in _SAM_VARIANTS:
        from zsplg.masks.sam import build_sam_generator

        generator = build_sam_generator(_SAM_VARIANTS[name], sam_checkpoint, device=device,
                                        **options)
    elif name in _SAM2_VARIANTS:
        from zsplg.masks.sam2 import build_sam2_generator

        generator = build_sam2_generator(_SAM2_VARIANTS[name], sam_checkpoint, device=device,
                                         **options)
    else:
        from zsplg.masks.superpixel import SuperpixelConfig, SuperpixelGenerator

        generator = SuperpixelGenerator(SuperpixelConfig(**options))
    if cache:
        from zsplg.masks.cache import CachedMaskGenerator

        generator = CachedMaskGenerator(generator, None if cache is True else cache)
    return generator
