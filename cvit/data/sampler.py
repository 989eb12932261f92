"""A shuffling sampler that can start mid-epoch, for exact mid-task resume."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler

from cvit.seeding import seeded_generator


class ResumableSampler(Sampler[int]):
    """Indices 0..size-1 in a permutation seeded by (seed, epoch), so every epoch's order can be
    rebuilt after a restart. On its first iteration it asks `already_seen()` how many leading indices
    to drop (the samples a fit restored mid-epoch has trained on; asked then, because Lightning builds
    the dataloader before it restores the loops). Lightning calls `set_epoch` at each epoch start.
    `len` stays the full size so step-based schedules are sized as in an uninterrupted run."""

    def __init__(self, size: int, seed: int, already_seen: Callable[[], int]) -> None:
        self.size, self.seed = size, seed
        self.epoch = 0
        self.already_seen: Callable[[], int] | None = already_seen

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = seeded_generator(self.seed, self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        start = self.already_seen() if self.already_seen is not None else 0
        self.already_seen = None
        return iter(order[start:])

    def __len__(self) -> int:
        return self.size
