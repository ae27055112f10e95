"""Mask proposals cached on disk, for any mask generator.

Mask generation (SAM above all) is the costly step of labelling and does not depend on
the class list or the vision-language backend, so a rerun with other classes or another
scorer should not pay for it again. Entries are keyed by the image (sha256 of its array
bytes, dtype and shape) and by the generator's `config()` (sha256 of its JSON), stored as
compressed .npz files (bit-packed masks, scores, areas) written atomically. An entry that
cannot be read or does not match its key is ignored and recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np

from zsplg.masks.base import MaskGenerator, MaskProposals

_FORMAT_VERSION = 1


def image_key(image: np.ndarray) -> str:
    """sha256 over an array's dtype, shape and bytes."""
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{array.dtype.str}|{array.shape}|".encode())
    digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def config_key(config: dict) -> str:
    """sha256 of a generator config as canonical JSON."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def default_mask_cache_dir() -> Path:
    from zsplg.runtime.cache import cache_dir

    return cache_dir() / "masks"


class CachedMaskGenerator:
    """Wraps a MaskGenerator; same `name` and `config()`, masks served from disk when cached.

    hits / misses / rejected count cache lookups (rejected: unreadable or mismatched
    entries, which are recomputed and overwritten).
    """

    def __init__(self, generator: MaskGenerator, cache_dir: str | Path | None = None) -> None:
        self.generator = generator
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_mask_cache_dir()
        self.hits = 0
        self.misses = 0
        self.rejected = 0

    @property
    def name(self) -> str:
        return self.generator.name

    def config(self) -> dict:
        return self.generator.config()

    def entry_path(self, image: np.ndarray) -> Path:
        return self._path(image_key(image), config_key(self.config()))

    def _path(self, image_hash: str, config_hash: str) -> Path:
        safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(self.name)) or "generator"
        return self.cache_dir / f"{safe_name}-{config_hash[:16]}" / f"{image_hash}.npz"

    def generate(self, image: np.ndarray) -> MaskProposals:
        image_hash, config_hash = image_key(image), config_key(self.config())
        path = self._path(image_hash, config_hash)
        if path.exists():
            cached = _read_entry(path, image_hash, config_hash, image.shape[:2])
            if cached is not None:
                self.hits += 1
                return cached
            self.rejected += 1
        self.misses += 1
        proposals = self.generator.generate(image)
        try:
            _write_entry(path, proposals, image_hash, config_hash)
        except OSError as error:  # a cache that cannot be written must not stop a run
            warnings.warn(f"could not cache masks at {path}: {error}", RuntimeWarning,
                          stacklevel=2)
        return proposals


def _write_entry(path: Path, proposals: MaskProposals, image_hash: str,
                 config_hash: str) -> None:
    from zsplg.data.labels import atomic_write_bytes

    n, height, width = proposals.masks.shape
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        version=np.int64(_FORMAT_VERSION),
        image_sha256=np.array(image_hash),
        config_sha256=np.array(config_hash),
        shape=np.array([n, height, width], dtype=np.int64),
        masks=np.packbits(proposals.masks.reshape(n, height * width), axis=1),
        scores=proposals.scores.astype(np.float32),
        areas=proposals.areas.astype(np.int64),
    )
    atomic_write_bytes(path, buffer.getvalue())


def _read_entry(path: Path, image_hash: str, config_hash: str,
                image_size: tuple[int, ...]) -> MaskProposals | None:
    """The cached proposals, or None when the file is unreadable or not this entry."""
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
            if (int(data["version"]) != _FORMAT_VERSION
                    or str(data["image_sha256"]) != image_hash
                    or str(data["config_sha256"]) != config_hash):
                return None
            n, height, width = (int(v) for v in data["shape"])
            if (height, width) != tuple(image_size) or n < 0:
                return None
            packed, scores, areas = data["masks"], data["scores"], data["areas"]
            if (packed.dtype != np.uint8 or packed.shape != (n, -(-height * width // 8))
                    or scores.dtype != np.float32 or scores.shape != (n,)
                    or areas.dtype != np.int64 or areas.shape != (n,)):
                return None
            masks = np.unpackbits(packed, axis=1, count=height * width).astype(bool)
            masks = masks.reshape(n, height, width)
            if not np.array_equal(masks.reshape(n, height * width).sum(axis=1), areas):
                return None
            return MaskProposals(masks=masks, scores=scores, areas=areas)
    except Exception:  # any unreadable entry (truncated zip, bad header, missing key...)
        return None
