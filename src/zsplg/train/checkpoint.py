"""Checkpoints that survive ``kill -9``: written to a temporary file, then renamed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from zsplg.data.errors import InputError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a reader (or a resumed run) sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A zsplg training checkpoint, or an InputError naming the file and the problem."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "checkpoint not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise InputError(p, f"cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "model" not in state or "model_args" not in state:
        raise InputError(p, "not a zsplg training checkpoint (no 'model'/'model_args' entries)")
    return state
