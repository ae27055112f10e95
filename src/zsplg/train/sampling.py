"""Deterministic, resumable data order.

Position p of a stream (p = 0, 1, 2, ...) maps to sample ``perm_e[p mod n]``
of epoch ``e = p // n``, where ``perm_e`` is drawn from ``(seed, stream, e)``.
So the order depends only on the seed, never on how many batches were drawn
before, and a resumed run starts exactly at the batch it stopped at. Ranks
take disjoint slices of each global batch, so DDP sees every sample once per
epoch across the processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler


class StreamSampler(Sampler):
    """Infinite ``(epoch, index)`` pairs for one rank, from global batch ``start_batch`` on."""

    def __init__(self, size: int, batch_size: int, seed: int, stream: int,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if size < 1:
            raise ValueError("cannot sample from an empty data set")
        self.size, self.batch_size = size, batch_size
        self.seed, self.stream = seed, stream
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size
        self._perm_epoch = -1
        self._perm = np.arange(size)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, self.stream, epoch])
            self._perm, self._perm_epoch = rng.permutation(self.size), epoch
        return self._perm

    def position(self, global_batch: int, slot: int) -> int:
        return (global_batch * self.world_size + self.rank) * self.batch_size + slot

    def __iter__(self) -> Iterator[tuple[int, int]]:
        batch = self.start_batch
        while True:
            for slot in range(self.batch_size):
                p = self.position(batch, slot)
                epoch = p // self.size
                yield epoch, int(self._permutation(epoch)[p % self.size])
            batch += 1


class EpochIndexed(Dataset):
    """Lets a dataset whose augmentation is seeded by (epoch, index) take sampler pairs."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        epoch, index = item
        self.dataset.set_epoch(epoch)
        return self.dataset[index]
