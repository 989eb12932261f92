"""Task scorers behind one contract; `get_scorer(name, relaxed)` builds one.

`score` returns corpus numbers on a 0..100 scale, "score" being the one the accuracy matrix records;
`item_scores` returns one number in 0..1 per item. Every item has a non-empty list of references.
`relaxed=True` changes the short-answer scorers only (RELAXABLE; the others ignore it): an item also counts
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


def _relaxed_hit(prediction: str, references: Sequence[str]) -> bool:
    """The relaxed rule: a normalised reference occurs as whole words in the normalised prediction
    (an empty normalised prediction matches nothing; a reference may normalise to "", e.g. "a")."""
    pred = normalize_answer(prediction)
    return bool(pred) and any(pred == ref or _contains(pred, ref) for ref in map(normalize_answer, references))


def _relaxable(strict: Judge) -> Callable[..., float]:
    """A judge taking `relaxed`: relaxed also accepts `_relaxed_hit`."""

    def judge(prediction: str, references: Sequence[str], relaxed: bool = False) -> float:
        return float(strict(prediction, references) or (relaxed and _relaxed_hit(prediction, references)))

    judge.__doc__ = strict.__doc__
    return judge


def _equal(pred: str, references: Sequence[str], fold: Callable[[str], str]) -> float:
    """1.0 if the already-folded `pred` equals a reference folded by `fold` (outer whitespace stripped)."""
    return float(any(pred == fold(ref.strip()) for ref in references))


def _exact(prediction: str, references: Sequence[str]) -> float:
    """CoIN's VizWiz / VQAv2 and UCIT's option and word tasks: pred.upper() == answer.upper() (outer
    whitespace stripped, as generation does; a trailing period makes it wrong)."""
    return _equal(prediction.strip().upper(), references, str.upper)




def _gqa(prediction: str, references: Sequence[str]) -> float:
    """GQA's rule (LLaVA's convert_gqa_for_eval + eval_gqa): trailing periods stripped, lowercased,
    then equal to the (lowercase) answer."""
    return _equal(prediction.strip().rstrip(".").lower(), references, str.lower)


def _ocr(prediction: str, references: Sequence[str]) -> float:
    """CoIN's OCR-VQA rule: an output containing "Unanswerable" is wrong; otherwise lowercased equality."""
    if "Unanswerable" in prediction:
        return 0.0
    return _equal(prediction.strip().lower(), references, str.lower)


def _contained(prediction: str, references: Sequence[str], fold: Callable[[str], str]) -> float:
    pred = fold(prediction.strip())
    return float(bool(pred) and any(fold(ref) in pred or pred in fold(ref) for ref in references))


def _classification(prediction: str, references: Sequence[str]) -> float:
    """CoIN's ImageNet rule: the label is a substring of the prediction or the prediction of the label,
    case-sensitive, no normalisation. Unlike the original (where "" is in every label), an empty
    prediction is wrong."""
    return _contained(prediction, references, str)


def _classification_ci(prediction: str, references: Sequence[str]) -> float:
    """SMoLoRA's classification rule (CVIT ImageNet, Places365): `classification` on upper-cased text."""
    return _contained(prediction, references, str.upper)


exact_match = _relaxable(_exact)
gqa_match = _relaxable(_gqa)
ocr_match = _relaxable(_ocr)
classification_match = _relaxable(_classification)
classification_ci_match = _relaxable(_classification_ci)


def vqa_accuracy(prediction: str, references: Sequence[str], relaxed: bool = False) -> float:
    """With >= 10 references, TextVQA's soft accuracy (LLaVA m4c_evaluator) on EvalAI-normalised forms:
    the mean over the leave-one-out subsets of min(1, matching answers / 3); with fewer, the `exact`
    rule. Relaxed, a reference also matches when it occurs as whole words in the prediction."""
    if len(references) < 10:
        return exact_match(prediction, references, relaxed)
    pred = normalize_answer(prediction)
    refs = map(normalize_answer, references)
    hits = [pred == ref or (relaxed and bool(pred) and _contains(pred, ref)) for ref in refs]
    matches = sum(hits)
    return fmean(min(1.0, (matches - hit) / 3) for hit in hits)


# ---- multiple choice -----------------------------------------------------------------------------

_SINGLE_CHARACTER_WORD = re.compile(r"\b(\w)\b")


def extract_choice(text: str) -> str | None:
    """The option letter as ScienceQA's evaluation (LLaVA eval_science_qa) reads it: the whole output
    when it is a letter, else a leading "X. ", else the first single-character word, upper-cased. The
    first two cases are instances of the third, so that rule alone is applied: "b" -> "B",
    "(C) cat" -> "C", "The answer is A" -> "A", "I think B" -> "I". None if there is no such word."""
    match = _SINGLE_CHARACTER_WORD.search(text.strip())
    return match.group(1).upper() if match else None


def choice_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the prediction's letter equals a reference's letter; no letter scores 0."""
    letter = extract_choice(prediction)
    return float(letter is not None and any(letter == extract_choice(ref) for ref in references))


# ---- grounding -----------------------------------------------------------------------------------

_NUMBER = r"(?<![\w.])(?:\d+(?:\.\d*)?|\.\d+)"  # not the digit of a name such as "x1"
_BRACKETED_BOX = re.compile(r"[\[(]\s*" + r"(?:\s*[,;]\s*|\s+)".join([f"({_NUMBER})"] * 4) + r"\s*[\])]")


def parse_box(text: str) -> Box | None:
    """(x1, y1, x2, y2) from free text, each pair put in order: the first bracketed group of four
    unsigned numbers ("[0.1, 0.2, 0.3, 0.4]", "(0.1 0.2 0.3 0.4)"), else the first four numbers
    anywhere ("x1=0.1, ..." reads 0.1, ...); None if there are fewer than four. (CoIN's own parser needs
    the bare list and, by a slicing slip, drops the last digit of the last coordinate; this one reads the
    box as written and forgives wrapping text.)"""
    bracketed = _BRACKETED_BOX.search(text)
    numbers = [float(n) for n in (bracketed.groups() if bracketed else re.findall(_NUMBER, text)[:4])]
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
    "vqa": vqa_accuracy, "exact": exact_match, "gqa": gqa_match, "ocr": ocr_match, "choice": choice_match,
    "classification": classification_match, "classification_ci": classification_ci_match,
    "grounding": grounding_hit,
}
RELAXABLE = ("vqa", "exact", "gqa", "ocr", "classification", "classification_ci")
SCORER_NAMES: tuple[str, ...] = (*_JUDGES, "caption")


def get_scorer(name: str, relaxed: bool = False, caption_metric: str = "cider") -> Scorer:
    """The scorer called `name` (one of SCORER_NAMES); ValueError naming the known ones otherwise.
    `caption_metric` (one of captions.CAPTION_METRICS) is the caption scorer's "score"."""
    if name == "caption":
        return CaptionScorer(caption_metric)
    if name not in _JUDGES:
        raise ValueError(f"unknown scorer {name!r}; known scorers: {', '.join(SCORER_NAMES)}")
    judge = _JUDGES[name]
    return MeanScorer(name, judge, partial(judge, relaxed=True) if relaxed and name in RELAXABLE else None)
