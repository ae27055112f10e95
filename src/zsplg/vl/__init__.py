"""Dense vision-language backends, chosen by name."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # vl.base loads PyTorch; choosing a backend by name must not
    from zsplg.vl.base import DenseVisionLanguageModel

# name -> EfficientNet-Lite variant of the ConSE backend
_CONSE_VARIANTS = {
    "conse": "efficientnet-lite0",
    "conse-lite0": "efficientnet-lite0",
    "conse-lite1": "efficientnet-lite1",
    "conse-lite2": "efficientnet-lite2",
}
# name -> dense mode of the CLIP backend
_CLIP_MODES = {"clip-gem": "gem", "clip-maskclip": "maskclip"}
VL_MODELS = (*_CLIP_MODES, *_CONSE_VARIANTS)
CLIP_WEIGHTS = "clip-vit-b-16-openai"

__all__ = ["VL_MODELS", "build_vl_model", "resolve_vl_name"]


def resolve_vl_name(name: str, clip_checkpoint: str | Path | None = None) -> str:
    """"auto" -> CLIP + GEM when its weights are present (cache or explicit
    path), else the offline ConSE backend."""
    if name == "auto":
        from zsplg.runtime.weights import is_present

        return "clip-gem" if clip_checkpoint or is_present(CLIP_WEIGHTS) else "conse"
    if name not in VL_MODELS:
        raise ValueError(f"unknown vision-language backend {name!r}; choose from auto, "
                         f"{', '.join(VL_MODELS)}")
    return name


def build_vl_model(name: str = "auto", device: str = "cpu",
                   clip_checkpoint: str | Path | None = None,
                   **options) -> DenseVisionLanguageModel:
    name = resolve_vl_name(name, clip_checkpoint)
    if name in _CLIP_MODES:
        from zsplg.vl.clip_gem import build_clip_backend

        return build_clip_backend(clip_checkpoint, dense_mode=_CLIP_MODES[name], device=device,
                                  **options)
    from zsplg.vl.conse import ConSEBackend

    return ConSEBackend(variant=_CONSE_VARIANTS[name], device=device, **options)
