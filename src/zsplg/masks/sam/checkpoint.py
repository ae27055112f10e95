"""Loading SAM weights, checked before torch sees them.

A wrong or damaged checkpoint is the usual way a SAM run fails, and torch's own
message lists every key. Checking keys and shapes first lets the error name the
file, say in a few words what is wrong, and suggest the variant the file seems to
hold. SAM 2.1's loader (zsplg.masks.sam2) reuses the checks and the error type.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

__all__ = ["SAM_VARIANTS", "SamCheckpointError", "load_sam_checkpoint", "model_fingerprint",
           "state_dict_problems"]

SAM_VARIANTS = ("vit_b", "vit_l", "vit_h")
_EMBED_DIM_TO_VARIANT = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


class SamCheckpointError(RuntimeError):
    """A SAM checkpoint file cannot be read or does not fit the requested model.

    Its own type so that the CLI can report it as one line naming the file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _sam_registry() -> dict:
    try:
        from segment_anything import sam_model_registry
    except ImportError as error:  # pragma: no cover - segment-anything is installed with zsplg
        raise ImportError("SAM masks need the segment-anything package: "
                          "pip install segment-anything") from error
    return sam_model_registry


def _describe_keys(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def state_dict_problems(expected: dict[str, tuple[int, ...]],
                        state: dict[str, torch.Tensor]) -> list[str]:
    """Why ``state`` does not fit a model with these key shapes (empty: it fits).

    Checked before load_state_dict so the message names what is wrong in a few
    words instead of torch's list of every key; public because the SAM 2.1 loader
    checks its files the same way.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(key for key in expected
                       if key in state and tuple(state[key].shape) != expected[key])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors ({_describe_keys(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors ({_describe_keys(unexpected)})")
    if misshaped:
        problems.append(f"{len(misshaped)} tensors of the wrong shape "
                        f"({_describe_keys(misshaped)})")
    return problems


def load_sam_checkpoint(variant: str, checkpoint: str | Path) -> Sam:
    """Build SAM `variant` and load `checkpoint` into it with strict key and shape checks.

    Raises SamCheckpointError naming the file when it cannot be read or does not fit
    (missing, unexpected or wrongly shaped tensors; a likely other variant is suggested).
    """
    if variant not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM variant {variant!r}; choose from {', '.join(SAM_VARIANTS)}")
    build = _sam_registry()[variant]
    path = Path(checkpoint)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails in many ways (zip, pickle, EOF, OS)
        raise SamCheckpointError(path, f"cannot be read as a torch checkpoint ({error})") from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # training-style wrapper {"model": state_dict, ...}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SamCheckpointError(path, "is not a state dict of tensors")

    with torch.device("meta"):  # the expected keys and shapes, without allocating weights
        expected = {key: tuple(value.shape) for key, value in build().state_dict().items()}
    problems = state_dict_problems(expected, state)
    if problems:
        hint = ""
        patch = state.get("image_encoder.patch_embed.proj.weight")
        if patch is not None and patch.ndim == 4:
            guess = _EMBED_DIM_TO_VARIANT.get(int(patch.shape[0]))
            if guess and guess != variant:
                hint = f"; it looks like a SAM {guess} checkpoint"
        raise SamCheckpointError(
            path, f"is not a SAM {variant} checkpoint: {'; '.join(problems)}{hint}")

    model = build()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # pragma: no cover - the checks above catch mismatches
        raise SamCheckpointError(path, f"does not load into SAM {variant}: {error}") from error
    return model.eval()


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over a model's state dict (names, dtypes, shapes, values).

    A model built in memory has no checkpoint file to name, so mask caches and
    run.json identify it by its weights instead."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def model_and_checkpoint(model: torch.nn.Module | None, checkpoint: str | Path | None,
                         weights_name: str, load: Callable[[Path], torch.nn.Module],
                         ) -> tuple[torch.nn.Module, Path | None]:
    """The model a SAM or SAM 2.1 generator wraps, and the checkpoint it came from.

    A model passed in is used as it is (a checkpoint named beside it must exist,
    since run.json records it); otherwise the named checkpoint, else the one in
    the weights cache, is loaded, so a missing file is one error naming the
    option and the fetch command.
    """
    path = Path(checkpoint).expanduser() if checkpoint is not None else None
    if model is None:
        from zsplg.runtime.weights import resolve_weights

        path = resolve_weights(weights_name, checkpoint, option_hint="--sam-checkpoint PATH")
        return load(path), path
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    return model, path
