"""torchrun support: the same command runs as one process or many.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them every method here
is a no-op, so single-process code paths need no special cases. Labelling
uses the ranks for sharding and barriers (gloo, no tensors move); training
also reduces tensors (nccl on GPUs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized()


@dataclass(frozen=True)
class Ranks:
    """This process's place among the torchrun processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        """What torchrun asked for, read from the environment (no process group yet)."""
        return cls(rank=int(os.environ.get("RANK", 0)),
                   world_size=int(os.environ.get("WORLD_SIZE", 1)),
                   local_rank=int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def join(self, device: str = "cpu") -> Ranks:
        """Join the process group when launched by torchrun: nccl on GPUs, gloo on CPU."""
        if self.enabled and not _joined():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend=backend)
        return self

    def barrier(self) -> None:
        if _joined():
            dist.barrier()

    def shard(self, items: Sequence[T]) -> list[T]:
        """Rank r takes items r, r + W, r + 2W, ..."""
        return list(items[self.rank::self.world_size])

    def file_name(self, name: str) -> str:
        """``run.json`` on rank 0, ``run.rank2.json`` on rank 2: one writer per file."""
        if self.is_main:
            return name
        stem, dot, ext = name.partition(".")
        return f"{stem}.rank{self.rank}{dot}{ext}"

    @contextmanager
    def rank_zero_first(self) -> Iterator[None]:
        """Rank 0 runs the block first, the others after it (e.g. to reuse its file)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if _joined():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's decision for everyone (so a refusal on rank 0 stops all ranks)."""
    if not _joined():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.broadcast(t, src=0)
    return bool(t.item())


def shutdown() -> None:
    if _joined():
        dist.destroy_process_group()
