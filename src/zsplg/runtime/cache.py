"""Where zsplg keeps things worth not recomputing (text embeddings, later
mask proposals and weights): $ZSPLG_CACHE_DIR, else $XDG_CACHE_HOME/zsplg,
else ~/.cache/zsplg."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    explicit = os.environ.get("ZSPLG_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "zsplg"
