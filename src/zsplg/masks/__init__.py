"""Class-agnostic mask generators, chosen by name."""

from __future__ import annotations

from pathlib import Path

from zsplg.masks.base import MaskGenerator, MaskProposals

# name -> SAM variant
_SAM_VARIANTS = {"sam": "vit_b", "sam-vit-b": "vit_b", "sam-vit-l": "vit_l",
                 "sam-vit-h": "vit_h"}
MASK_GENERATORS = (*_SAM_VARIANTS, "superpixel")

__all__ = ["MASK_GENERATORS", "MaskGenerator", "MaskProposals", "build_mask_generator",
           "resolve_mask_generator_name"]


def resolve_mask_generator_name(name: str, sam_checkpoint: str | Path | None = None) -> str:
    """"auto" -> SAM when a checkpoint is given or one is in the weights cache
    (the largest present), else the offline superpixel generator."""
    if name in ("auto", "sam") and sam_checkpoint:
        return _variant_from_filename(Path(sam_checkpoint).name)
    if name == "auto":
        from zsplg.weights import is_present

        for candidate in ("sam-vit-h", "sam-vit-l", "sam-vit-b"):
            if is_present(candidate):
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
    else:
        from zsplg.masks.superpixel import SuperpixelConfig, SuperpixelGenerator

        generator = SuperpixelGenerator(SuperpixelConfig(**options))
    if cache:
        from zsplg.masks.cache import CachedMaskGenerator

        generator = CachedMaskGenerator(generator, None if cache is True else cache)
    return generator
