"""Class-agnostic mask generators, chosen by name."""

from __future__ import annotations

from zsplg.masks.base import MaskGenerator, MaskProposals

MASK_GENERATORS = ("superpixel",)

__all__ = ["MASK_GENERATORS", "MaskGenerator", "MaskProposals", "build_mask_generator",
           "resolve_mask_generator_name"]


def resolve_mask_generator_name(name: str) -> str:
    """"auto" -> the best generator whose weights are present (for now the offline one)."""
    if name == "auto":
        return "superpixel"
    if name not in MASK_GENERATORS:
        raise ValueError(f"unknown mask generator {name!r}; choose from auto, "
                         f"{', '.join(MASK_GENERATORS)}")
    return name


def build_mask_generator(name: str = "auto", **options) -> MaskGenerator:
    name = resolve_mask_generator_name(name)
    from zsplg.masks.superpixel import SuperpixelConfig, SuperpixelGenerator

    return SuperpixelGenerator(SuperpixelConfig(**options))
