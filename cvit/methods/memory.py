"""The replay memory: which training records of finished tasks are kept, and which are recalled.

It holds record indices (references into each task's training data, never copies), under one policy:
  quota       `size` seeded indices of every finished task (the memory grows by `size` per task);
              every kept index is recalled.
  reservoir   one buffer of `size` indices over the whole stream (reservoir sampling, Vitter's algorithm R):
              after N training records every one of them is kept with probability size / N, so the
              share of a task follows its size; every kept index is recalled.
  similarity  ProgLoRA's task recall (proglora.txt Eq. 9): `size` (phi) seeded indices of every task are
              kept; recall takes the first round((1 - w_p) * phi) of task p, w_p the new task's similarity
              to p.
Draws are seeded by (seed, task index), so a resumed stream keeps and recalls the same indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cvit.seeding import seeded_generator

POLICIES = ("quota", "reservoir", "similarity")


def similarity_counts(weights: Sequence[float], phi: int) -> list[int]:
    """Samples recalled from each earlier task p: round((1 - w_p) * phi) (proglora.txt Eq. 9)."""
    return [round((1 - w) * phi) for w in weights]


class ReplayMemory:
    def __init__(self, policy: str = "quota", size: int = 50, seed: int = 0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.policy, self.size, self.seed = policy, size, seed
        self.kept: dict[str, list[int]] = {}  # quota, similarity: task -> indices, in draw order
        self.slots: list[tuple[str, int]] = []  # reservoir: (task, index) per slot
        self.seen = 0  # reservoir: training records offered so far

    def store(self, task: str, task_index: int, records: int) -> None:
        """Offer the `records` training records of a finished task (the `task_index`-th of the stream)."""
        generator = seeded_generator(self.seed, task_index)
        if self.policy != "reservoir":
            self.kept[task] = torch.randperm(records, generator=generator)[: self.size].tolist()
            return
        self.kept[task] = []  # the task is known to the memory even if none of its records stays
        # algorithm R: the n-th record offered (1-based) replaces slot j ~ U{0..n-1} when j < size
        draws = (torch.rand(records, generator=generator, dtype=torch.float64)
                 * torch.arange(self.seen + 1, self.seen + records + 1, dtype=torch.float64)).long().tolist()
        for index, slot in enumerate(draws):
            if len(self.slots) < self.size:
                self.slots.append((task, index))
            elif slot < self.size:
                self.slots[slot] = (task, index)
        self.seen += records

    @property
    def tasks(self) -> list[str]:
        """The tasks offered so far, in stream order."""
        return list(self.kept)

    @property
    def buffer(self) -> dict[str, list[int]]:
        """Every kept index, per task in stream order (reservoir: sorted)."""
        if self.policy != "reservoir":
            return {task: list(indices) for task, indices in self.kept.items()}
        return {task: sorted(i for t, i in self.slots if t == task) for task in self.kept}

    def recall(self, similarity: Sequence[float] | None = None) -> dict[str, list[int]]:
        """The indices to replay per earlier task (stream order; empty lists kept). `similarity` (policy
        similarity only): the new task's weight w_p for each earlier task, in that order."""
        buffer = self.buffer
        if self.policy != "similarity":
            return buffer
        if similarity is None or len(similarity) != len(buffer):
            raise ValueError(f"similarity recall needs one weight per earlier task ({len(buffer)}), got "
                             f"{None if similarity is None else len(similarity)}")
        counts = similarity_counts(similarity, self.size)
        return {task: indices[:count] for (task, indices), count in zip(buffer.items(), counts, strict=True)}

    def state_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "slots": self.slots, "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kept = {task: list(indices) for task, indices in state.get("kept", {}).items()}
        self.slots = [(task, int(index)) for task, index in state.get("slots", [])]
        self.seen = int(state.get("seen", 0))
