"""Building SAM 2.1 models and loading their weights, checked before torch sees them.

The model is built with `build_sam2` from the sam2 package's own hydra configs
(configs/sam2.1/sam2.1_hiera_{t,s}.yaml), so it is the library's architecture. A
checkpoint's keys and shapes are checked first, as for SAM (zsplg.masks.sam.checkpoint),
so a file that does not fit is reported in a few words that name it and, where they
can, say what it looks like (SAM v1, another Hiera size, SAM 2.0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from zsplg.masks.sam.checkpoint import SamCheckpointError, state_dict_problems

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base

__all__ = ["SAM2_VARIANTS", "Sam2CheckpointError", "Sam2Variant", "build_sam2_model",
           "load_sam2_checkpoint", "sam2_variant"]


@dataclass(frozen=True)
class Sam2Variant:
    """A SAM 2.1 model size: its hydra config in the sam2 package and its weights entry
    in zsplg.runtime.weights (public: the generator's builder resolves the weights)."""

    config: str
    weights: str
    label: str


SAM2_VARIANTS = {
    "tiny": Sam2Variant("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1-hiera-tiny",
                        "SAM 2.1 Hiera-Tiny"),
    "small": Sam2Variant("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1-hiera-small",
                         "SAM 2.1 Hiera-Small"),
}
# other checkpoints' Hiera block counts, for the "looks like" hint
_BLOCKS_TO_NAME = {12: "SAM 2.1 Hiera-Tiny", 16: "SAM 2.1 Hiera-Small",
                   24: "SAM 2.1 Hiera-Base+", 48: "SAM 2.1 Hiera-Large"}
_BLOCK_KEY = re.compile(r"^image_encoder\.trunk\.blocks\.(\d+)\.")


class Sam2CheckpointError(SamCheckpointError):
    """A SAM 2.1 checkpoint file cannot be read or does not fit the requested model.

    A SamCheckpointError, so callers that report those (the CLI) report these too."""


def _sam2_modules() -> Any:
    try:
        import sam2.build_sam as build_sam
    except ImportError as error:  # pragma: no cover - sam2 is installed with zsplg
        raise ImportError("SAM 2.1 masks need Meta's sam2 package: "
                          "SAM2_BUILD_CUDA=0 pip install sam2==1.1.0") from error
    return build_sam


def sam2_variant(variant: str) -> Sam2Variant:
    """The spec of a SAM 2.1 size, or a ValueError naming the sizes there are. Public
    because the generator's builder needs the spec's weights name too."""
    if variant not in SAM2_VARIANTS:
        raise ValueError(f"unknown SAM 2.1 variant {variant!r}; choose from "
                         f"{', '.join(SAM2_VARIANTS)}")
    return SAM2_VARIANTS[variant]


def build_sam2_model(variant: str = "tiny", hydra_overrides: list[str] | None = None,
                     ) -> SAM2Base:
    """A randomly initialised SAM 2.1 `variant` on the cpu, built by sam2's own
    `build_sam2` from its hydra config (`hydra_overrides`: extra hydra overrides)."""
    spec = sam2_variant(variant)
    build_sam = _sam2_modules()
    return build_sam.build_sam2(spec.config, ckpt_path=None, device="cpu", mode="eval",
                                hydra_overrides_extra=list(hydra_overrides or []))


def _looks_like(state: dict) -> str:
    """A guess at what a state dict is, for error messages ("" when unsure)."""
    if "image_encoder.patch_embed.proj.weight" in state and not any(
            key.startswith("image_encoder.trunk.") for key in state):
        return "; it looks like a SAM (v1) checkpoint: use --masks sam"
    blocks = {int(match.group(1)) for key in state if (match := _BLOCK_KEY.match(key))}
    if not blocks:
        return ""
    name = _BLOCKS_TO_NAME.get(max(blocks) + 1)
    if name is None:
        return ""
    version = "" if "no_obj_embed_spatial" in state else " (SAM 2.0: no SAM 2.1 keys)"
    return f"; it looks like a {name} checkpoint{version}"


def load_sam2_checkpoint(variant: str, checkpoint: str | Path) -> SAM2Base:
    """Build SAM 2.1 `variant` and load `checkpoint` into it with strict key and shape checks.

    The official files hold {"model": state_dict}; a bare state dict is accepted too.
    Raises Sam2CheckpointError naming the file when it cannot be read or does not fit
    (missing, unexpected or wrongly shaped tensors; a likely other model is suggested).
    """
    spec = sam2_variant(variant)
    path = Path(checkpoint)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails in many ways (zip, pickle, EOF, OS)
        raise Sam2CheckpointError(path, f"cannot be read as a torch checkpoint ({error})"
                                  ) from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # the official layout
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Sam2CheckpointError(path, "is not a state dict of tensors")

    # Hiera cannot be built on the meta device (it calls .item()), so the model is built
    # once, its state dict gives the expected keys and shapes, and the checkpoint fills it
    model = build_sam2_model(variant)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    problems = state_dict_problems(expected, state)
    if problems:
        hint = _looks_like(state)
        if spec.label in hint and "SAM 2.0" not in hint:
            hint = ""
        raise Sam2CheckpointError(
            path, f"is not a {spec.label} checkpoint: {'; '.join(problems)}{hint}")

    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # pragma: no cover - the checks above catch mismatches
        raise Sam2CheckpointError(path, f"does not load into {spec.label}: {error}") from error
    return model.eval()
