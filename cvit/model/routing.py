"""Routing: which adapters (and with which weights) the module's forward passes use, per batch row.

A method installs one `Router` on the module (`module.set_router`), which owns it. Generation asks
`route(batch)` for groups of rows, each generated inside its own context manager (a per-instance adapter
choice that keeps evaluation batched; one group with per-row weights serves mixtures). Training forwards run
inside `training(batch)`. The base class routes nothing.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

RowGroups = list[tuple[list[int], AbstractContextManager]]


def whole_batch(batch: dict[str, Any], context: AbstractContextManager) -> RowGroups:
    """One group: every row of `batch` under `context` (per-row weights, or one setting for all)."""
    return [(list(range(len(batch["input_ids"]))), context)]


class Router:
    def route(self, batch: dict[str, Any]) -> RowGroups:
        """Generation: (row indices, context) groups covering every row of `batch` once."""
        return whole_batch(batch, nullcontext())

    def training(self, batch: dict[str, Any]) -> AbstractContextManager:
        """The context of a training forward on `batch`."""
        return nullcontext()

    def inference_parameters(self, pool) -> int:
        """Adapter parameters generation uses (by default the active adapters')."""
        return pool.parameter_count(pool.active)

    def training_adapters(self, pool) -> list[str]:
        """The adapters a training forward runs, trained or not (by default the active ones): `cvit plan` counts
        what the frozen ones keep for backward."""
        return list(pool.active)

    def weighs_in_training(self) -> bool:
        """Whether a trained weight scales each training adapter's output (autograd then keeps every output)."""
        return False


def rows_by_key(keys: list[Any]) -> dict[Any, list[int]]:
    """Row indices grouped by their key, groups in first-seen order."""
    groups: dict[Any, list[int]] = {}
    for row, key in enumerate(keys):
        groups.setdefault(key, []).append(row)
    return groups
