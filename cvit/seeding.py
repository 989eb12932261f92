"""Seeded draws keyed by the run's seed and by what they are for, never by the global RNG's state (so a resumed
run, or a run that adds a callback, draws the same data orders, templates and memories).

Model initialisation (tiny models, fresh adapters) uses the global RNG, seeded by `torch.manual_seed` /
`L.seed_everything`, because modules draw from it when they are built.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def seeded_generator(seed: int, stream: int | None = None) -> torch.Generator:
    """A torch Generator for the draws of `stream` (an epoch, a task index) under `seed` (seed * 1_000_003 +
    stream), or of `seed` itself."""
    return torch.Generator().manual_seed(seed if stream is None else seed * 1_000_003 + stream)


def keyed_random(*key: object) -> random.Random:
    """A Python Random seeded by the "/"-joined `key` (e.g. the seed and a record id): string seeds hash with
    SHA-512, so the draws are the same on every machine and Python version."""
    return random.Random("/".join(map(str, key)))


def keyed_numpy(*key: object) -> np.random.Generator:
    """A numpy Generator (PCG64) seeded by the "/"-joined `key` through SHA-512, like `keyed_random`: the same
    draws on every machine (numpy's bit generators do not depend on the CPU)."""
    digest = hashlib.sha512("/".join(map(str, key)).encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))
