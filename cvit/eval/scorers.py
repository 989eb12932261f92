"""Task scorers behind one contract; `get_scorer(name, relaxed)` builds one.

`score` returns corpus numbers on a 0..100 scale, "score" being the one the accuracy matrix records;
`item_scores` returns one number in 0..1 per item. Every item has a non-empty list of references.
`relaxed=True` changes vqa, exact and classification only (the others ignore it): an item also counts
when a normalised reference occurs as a whole-word sequence inside the normalised prediction; "score" is
then the relaxed number, "strict" the plain rule's, and `item_scores` follow the relaxed rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from statistics import fmean
from typing import Protocol

from cvit.eval.captions import CaptionScorer
from cvit.eval.items import checked_items
from cvit.eval.normalize import normalize_answer

Box = tuple[float, float, float, float]
Judge = Callable[[str, Sequence[str]], float]


class Scorer(Protocol):
    name: str

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]: ...

    def item_scores(self, predictions: list[str], references: list[list[str]]) -> list[float]: ...


# ---- short answers -------------------------------------------------------------------------------


def _contains(prediction: str, reference: str) -> bool:
    """Whether the words of non-empty `reference` occur consecutively in `prediction`."""
    words, ref = prediction.split(), reference.split()
    return bool(ref) and any(words[i:i + len(ref)] == ref for i in range(len(words) - len(ref) + 1))


def _hits(prediction: str, references: Sequence[str], relaxed: bool) -> list[bool]:
    """Per reference: does the prediction match it? An empty normalised prediction matches nothing
    (a reference may normalise to "", e.g. "a")."""
    pred = normalize_answer(prediction)
    refs = map(normalize_answer, references)
    return [bool(pred) and (pred == ref or (relaxed and _contains(pred, ref))) for ref in refs]


def vqa_accuracy(prediction: str, references: Sequence[str], relaxed: bool = False) -> float:
    """With >= 10 references (VQAv2) the soft accuracy: the mean over the leave-one-out subsets of
    min(1, matching answers / 3); otherwise 1.0 if the prediction matches any reference. Matching is
    on `normalize_answer` forms."""
    hits = _hits(prediction, references, relaxed)
    if len(hits) < 10:
        return float(any(hits))
    matches = sum(hits)
    return fmean(min(1.0, (matches - hit) / 3) for hit in hits)


def classification_match(prediction: str, references: Sequence[str], relaxed: bool = False) -> float:
    """1.0 if the normalised prediction equals a normalised reference label."""
    return float(any(_hits(prediction, references, relaxed)))


def _exact_form(text: str) -> str:
    return text.strip().rstrip(".").strip().casefold()


def exact_match(prediction: str, references: Sequence[str], relaxed: bool = False) -> float:
    """1.0 if the prediction equals a reference ignoring case, outer whitespace and trailing periods;
    relaxed also accepts the relaxed rule on normalised forms."""
    pred = _exact_form(prediction)
    strict = any(pred == _exact_form(ref) for ref in references)
    return float(strict or (relaxed and any(_hits(prediction, references, True))))


# ---- multiple choice -----------------------------------------------------------------------------

_BARE_LETTER = re.compile(r"\(?([A-Za-z])\)?[.):]?")  # the whole answer: "A", "b", "(C)", "D."
_LEADING_LETTER = re.compile(r"\(?([A-Z])[.):\]]")  # "A. cat", "(B) dog", "C) ..."
_ANSWER_IS = re.compile(r"(?i:answer)(?:\s+is)?\s*:?\s*\(?([A-Z])(?![\w'\u2019])")
# A standalone capital letter, not the pronoun "I" in "I think".
_STANDALONE_LETTER = re.compile(r"(?<![\w'\u2019])(?!I\s+[a-z])([A-Z])(?![\w'\u2019])")


def extract_choice(text: str) -> str | None:
    """The option letter of a multiple-choice answer, tried in order: the whole answer a letter
    ("A", "(b)", "C."); a leading "A." / "A)" / "(A)"; "the answer is A" / "Answer: (A)"; the first
    standalone capital letter. None if there is none."""
    text = text.strip()
    match = _BARE_LETTER.fullmatch(text) or _LEADING_LETTER.match(text)
    match = match or _ANSWER_IS.search(text) or _STANDALONE_LETTER.search(text)
    return match.group(1).upper() if match else None


def choice_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the prediction's option letter equals a reference's letter; no letter scores 0."""
    letter = extract_choice(prediction)
    return float(letter is not None and any(letter == extract_choice(ref) for ref in references))


# ---- grounding -----------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_box(text: str) -> Box | None:
    """The first four unsigned numbers in `text` as (x1, y1, x2, y2), each pair put in order; None if
    there are fewer than four."""
    numbers = [float(number) for number in _NUMBER.findall(text)[:4]]
    if len(numbers) < 4:
        return None
    x1, y1, x2, y2 = numbers
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ordered boxes; 0.0 when the union has no area."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def grounding_hit(prediction: str, references: Sequence[str]) -> float:
    """1.0 if IoU(predicted box, a reference box) > 0.5; an unparsable prediction scores 0.
    Raises ValueError for a reference without four numbers."""
    boxes = [parse_box(ref) for ref in references]
    if None in boxes:
        raise ValueError(f"grounding reference without a box of four numbers: {references!r}")
    box = parse_box(prediction)
    return float(box is not None and any(box_iou(box, ref) > 0.5 for ref in boxes))


# ---- registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanScorer:
    """Corpus score = 100 x the mean per-item judgement. With `relaxed_judge`, "score" and the items
    use it and "strict" reports `judge` alongside."""

    name: str
    judge: Judge
    relaxed_judge: Judge | None = None

    def item_scores(self, predictions: list[str], references: list[list[str]]) -> list[float]:
        judge = self.relaxed_judge or self.judge
        return [judge(pred, refs) for pred, refs in checked_items(predictions, references)]

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        result = {"score": 100 * fmean(self.item_scores(predictions, references))}
        if self.relaxed_judge is not None:
            items = checked_items(predictions, references)
            result["strict"] = 100 * fmean(self.judge(pred, refs) for pred, refs in items)
        return result


_JUDGES: dict[str, Judge] = {
    "vqa": vqa_accuracy, "exact": exact_match, "choice": choice_match,
    "classification": classification_match, "grounding": grounding_hit,
}
RELAXABLE = ("vqa", "exact", "classification")
SCORER_NAMES: tuple[str, ...] = (*_JUDGES, "caption")


def get_scorer(name: str, relaxed: bool = False) -> Scorer:
    """The scorer called `name` (one of SCORER_NAMES); ValueError naming the known ones otherwise."""
    if name == "caption":
        return CaptionScorer()
    if name not in _JUDGES:
        raise ValueError(f"unknown scorer {name!r}; known scorers: {', '.join(SCORER_NAMES)}")
    judge = _JUDGES[name]
    return MeanScorer(name, judge, partial(judge, relaxed=True) if relaxed and name in RELAXABLE else None)
