"""A shuffling sampler that can start mid-epoch, for exact mid-task resume, sharded across data-parallel ranks."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler

from cvit.seeding import seeded_generator


class ResumableSampler(Sampler[int]):
    """Indices 0..size-1 in a permutation seeded by (seed, epoch), so every epoch's order can be
    rebuilt after a restart. On its first iteration it asks `already_seen()` how many leading indices
    to drop (the samples a fit restored mid-epoch has trained on; asked then, because Lightning builds
    the dataloader before it restores the loops). Lightning calls `set_epoch` at each epoch start.
    `len` stays the rank's full share so step-based schedules are sized as in an uninterrupted run.

    Under data parallelism every rank draws the same permutation, padded by wrapping to a multiple of `world`
    (as torch's DistributedSampler, so every rank takes the same number of steps), and rank r takes every
    world-th index from r: at a per-rank batch of B, one step of all ranks trains on the same B x world
    samples as one step of a single process at batch B x world."""

    def __init__(self, size: int, seed: int, already_seen: Callable[[], int], rank: int = 0, world: int = 1) -> None:
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.epoch = 0
        self.already_seen: Callable[[], int] | None = already_seen

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = seeded_generator(self.seed, self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        padded = len(self) * self.world
        order = (order * math.ceil(padded / max(1, self.size)))[:padded][self.rank::self.world]
        start = self.already_seen() if self.already_seen is not None else 0
        self.already_seen = None
        return iter(order[start:])

    def __len__(self) -> int:
        return math.ceil(self.size / self.world)
