"""Deterministic, resumable data order.

Each training sample is addressed as ``(index, seed)``: the epoch permutation comes from
``(run_seed, epoch)`` and every sample's augmentation RNG from ``(run_seed, epoch, position)``.
So the data a step sees depends only on the step number, not on the number of DataLoader workers
or on whether the run was interrupted and resumed. Ranks of a distributed run take disjoint
slices of each global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


def _mix(*xs: int) -> int:
    """A 63-bit hash of integers (splitmix64 steps), stable across processes and platforms."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (x & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class SeededDataset(Dataset):
    """Wraps a dataset so ``ds[(i, seed)]`` runs its random transform under
    ``torch.manual_seed(seed)`` without touching the caller's RNG."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, seed)`` for one epoch, starting at batch ``start`` (for resume).

    ``batch_size`` is the per-rank batch; the global batch is ``batch_size * world``; the last
    incomplete global batch is dropped.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        epoch: int,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.n, self.bs, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start, self.rank, self.world = start, rank, world

    @staticmethod
    def batches_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
        return n // (batch_size * world)

    def __len__(self) -> int:
        return self.batches_per_epoch(self.n, self.bs, self.world) - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        perm = torch.randperm(self.n, generator=g).tolist()
        gbs = self.bs * self.world
        for b in range(self.start, self.batches_per_epoch(self.n, self.bs, self.world)):
            lo = b * gbs + self.rank * self.bs
            yield [(perm[p], _mix(self.seed, self.epoch, p)) for p in range(lo, lo + self.bs)]
