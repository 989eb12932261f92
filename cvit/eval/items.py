"""Validation shared by every scorer: predictions paired with non-empty reference lists."""

from __future__ import annotations

from collections.abc import Sequence

Item = tuple[str, Sequence[str]]  # (prediction, its references)


def checked_items(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[Item]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("nothing to score: no predictions")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"item {index}: references must be a non-empty list of strings, got {refs!r}")
    return list(zip(predictions, references, strict=True))
