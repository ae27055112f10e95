"""Dense vision-language backends, chosen by name."""

from __future__ import annotations

from zsplg.vl.base import DenseVisionLanguageModel

# name -> EfficientNet-Lite variant of the ConSE backend
_CONSE_VARIANTS = {
    "conse": "efficientnet-lite0",
    "conse-lite0": "efficientnet-lite0",
    "conse-lite1": "efficientnet-lite1",
    "conse-lite2": "efficientnet-lite2",
}
VL_MODELS = tuple(_CONSE_VARIANTS)

__all__ = ["VL_MODELS", "DenseVisionLanguageModel", "build_vl_model", "resolve_vl_name"]


def resolve_vl_name(name: str) -> str:
    """"auto" -> the best backend whose weights are present (for now ConSE)."""
    if name == "auto":
        return "conse"
    if name not in VL_MODELS:
        raise ValueError(f"unknown vision-language backend {name!r}; choose from auto, "
                         f"{', '.join(VL_MODELS)}")
    return name


def build_vl_model(name: str = "auto", device: str = "cpu", **options) -> DenseVisionLanguageModel:
    name = resolve_vl_name(name)
    from zsplg.vl.conse import ConSEBackend

    return ConSEBackend(variant=_CONSE_VARIANTS[name], device=device, **options)
