"""The contract and the input validation shared by every scorer: predictions paired with non-empty
reference lists, judged once for both the corpus numbers and the per-item ones."""

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


class Scorer:
    """A scorer implements `score_items`; `score` and `item_scores` are its two halves."""

    name: str

    def score_items(self, predictions: list[str], references: list[list[str]]) -> tuple[dict[str, float], list[float]]:
        """(corpus numbers on 0..100 with "score" among them, one number in 0..1 per item), judging each item once."""
        raise NotImplementedError

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        return self.score_items(predictions, references)[0]

    def item_scores(self, predictions: list[str], references: list[list[str]]) -> list[float]:
        return self.score_items(predictions, references)[1]
