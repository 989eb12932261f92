"""Task scorers behind one contract; `get_scorer(name, relaxed, caption_metric, scoring)` builds one.

`score_items` returns corpus numbers on a 0..100 scale ("score" being the one the accuracy matrix records)
and one number in 0..1 per item, judging each item once; `score` and `item_scores` are its two halves.
Every item has a non-empty list of references.

`scoring` (one of SCORINGS, the config's `eval.scoring`): "official" (the default) applies each benchmark's
own evaluation code rule for rule, quirks included; "lenient" adds the kit's more forgiving readings, each
judge's docstring saying which (a judge without one scores the same either way). Predictions arrive
stripped of outer whitespace, as the kit's generation and LLaVA's `model_vqa*.py` leave them; the judges
strip them again so a predictions file scores the same.

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

from cvit.eval.captions import CaptionScorer
from cvit.eval.items import Scorer, checked_items
from cvit.eval.normalize import normalize_answer

Box = tuple[float, float, float, float]
Judge = Callable[..., float]  # (prediction, references, lenient=False[, relaxed=False]) -> 0..1
SCORINGS = ("official", "lenient")


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


def _relaxable(strict: Judge) -> Judge:
    """`strict` also taking `relaxed`: relaxed also accepts `_relaxed_hit`."""

    def judge(prediction: str, references: Sequence[str], lenient: bool = False, relaxed: bool = False) -> float:
        return float(strict(prediction, references, lenient) or (relaxed and _relaxed_hit(prediction, references)))

    judge.__doc__ = strict.__doc__
    return judge


def _equal(pred: str, references: Sequence[str], fold: Callable[[str], str], lenient: bool) -> float:
    """1.0 if the already-folded `pred` equals a reference folded by `fold`; the official scripts compare
    the reference as stored, lenient strips its outer whitespace first."""
    return float(any(pred == fold(ref.strip() if lenient else ref) for ref in references))


def _exact(prediction: str, references: Sequence[str], lenient: bool = False) -> float:
    """CoIN's eval_vizwiz.py / eval_vqav2.py (SMoLoRA's copies; MCITlib's eval_deepseek_r1.py for UCIT's
    option and word tasks): pred.upper() == answer.upper(); a trailing period makes it wrong.
    Lenient: the reference's outer whitespace is stripped."""
    return _equal(prediction.strip().upper(), references, str.upper, lenient)


def _gqa(prediction: str, references: Sequence[str], lenient: bool = False) -> float:
    """GQA as LLaVA's convert_gqa_for_eval.py + eval_gqa.py (CoIN's and SMoLoRA's copies) score it:
    trailing periods stripped and lowercased, then equal to the answer as stored.
    Lenient: the answer is also stripped and lowercased."""
    return _equal(prediction.strip().rstrip(".").lower(), references, str.lower if lenient else str, lenient)


def _ocr(prediction: str, references: Sequence[str], lenient: bool = False) -> float:
    """CoIN's eval_ocrvqa.py (SMoLoRA's copy): an output containing "Unanswerable" is wrong; otherwise
    pred.lower() == answer.lower(). Lenient: the reference's outer whitespace is stripped."""
    if "Unanswerable" in prediction:
        return 0.0
    return _equal(prediction.strip().lower(), references, str.lower, lenient)


def _contained(prediction: str, references: Sequence[str], fold: Callable[[str], str]) -> float:
    """1.0 if folded, either of prediction and a reference is a substring of the other; as in the
    original, an empty prediction is in every label and so counts."""
    pred = fold(prediction.strip())
    return float(any(fold(ref) in pred or pred in fold(ref) for ref in references))


def _classification(prediction: str, references: Sequence[str], lenient: bool = False) -> float:
    """CoIN's eval_ImagetNet.py: the label is a substring of the prediction or the prediction of the
    label, case-sensitive, no normalisation (so an empty prediction counts). Lenient changes nothing."""
    return _contained(prediction, references, str)


def _classification_ci(prediction: str, references: Sequence[str], lenient: bool = False) -> float:
    """SMoLoRA's eval_ImagetNet.py (CVIT ImageNet and Places365): `classification` on lower-cased text.
    Lenient changes nothing."""
    return _contained(prediction, references, str.lower)


exact_match = _relaxable(_exact)
gqa_match = _relaxable(_gqa)
ocr_match = _relaxable(_ocr)
classification_match = _relaxable(_classification)
classification_ci_match = _relaxable(_classification_ci)


def vqa_accuracy(prediction: str, references: Sequence[str], lenient: bool = False, relaxed: bool = False) -> float:
    """With >= 10 references, TextVQA's soft accuracy (LLaVA's m4c_evaluator.py, as CoIN's and SMoLoRA's
    eval_textvqa.py call it) on EvalAI-normalised forms: the mean over the leave-one-out subsets of
    min(1, matching answers / 3); lenient changes nothing there. With fewer, the `exact` rule (CoIN's
    single-answer VQAv2 / VizWiz files), lenient included. Relaxed, a reference also matches when it
    occurs as whole words in the prediction."""
    if len(references) < 10:
        return exact_match(prediction, references, lenient, relaxed)
    pred = normalize_answer(prediction)
    refs = map(normalize_answer, references)
    hits = [pred == ref or (relaxed and bool(pred) and _contains(pred, ref)) for ref in refs]
    matches = sum(hits)
    return fmean(min(1.0, (matches - hit) / 3) for hit in hits)


# ---- multiple choice -----------------------------------------------------------------------------

_SINGLE_CHARACTER_WORD = re.compile(r"\b(\w)\b")


def extract_choice(text: str) -> str | None:
    """The option letter as ScienceQA's evaluation (LLaVA's eval_science_qa.py, CoIN's and SMoLoRA's
    copies) reads it: the whole output when it is a letter, else a leading "X. ", else the first
    single-character word, upper-cased. The first two cases are instances of the third, so that rule alone
    is applied: "b" -> "B", "(C) cat" -> "C", "The answer is A" -> "A", "I think B" -> "I". None if there
    is no such word."""
    match = _SINGLE_CHARACTER_WORD.search(text.strip())
    return match.group(1).upper() if match else None


def choice_match(prediction: str, references: Sequence[str], lenient: bool = False) -> float:
    """ScienceQA's rule (`extract_choice`): 1.0 if the prediction's letter equals a reference's letter;
    no letter scores 0. Lenient changes nothing (the kit already reads letters as the original does)."""
    letter = extract_choice(prediction)
    return float(letter is not None and any(letter == extract_choice(ref) for ref in references))


# ---- grounding -----------------------------------------------------------------------------------

_NUMBER = r"(?<![\w.])(?:\d+(?:\.\d*)?|\.\d+)"  # not the digit of a name such as "x1"
_BRACKETED_BOX = re.compile(r"[\[(]\s*" + r"(?:\s*[,;]\s*|\s+)".join([f"({_NUMBER})"] * 4) + r"\s*[\])]")


def official_box(text: str, slip: bool = True) -> Box | None:
    """(x1, y1, x2, y2) as CoIN's eval_grounding.py reads a box (HiDe-LLaVA's and MCITlib's copies
    alike): every "[" and "]" deleted, then, for a prediction (`slip`), the first and last characters
    dropped (the original's slicing slip: "[0.1, 0.2, 0.3, 0.45]" reads y2 = 0.4, "..., 0.9]" reads 0.0),
    the rest split at commas into exactly four Python floats, corners as written. None otherwise, e.g.
    for text around the list or numbers separated by spaces."""
    body = text.replace("[", "").replace("]", "")
    try:
        numbers = tuple(float(part) for part in (body[1:-1] if slip else body).split(","))
    except ValueError:
        return None
    return numbers if len(numbers) == 4 else None


def parse_box(text: str) -> Box | None:
    """The kit's loose reading (lenient grounding): (x1, y1, x2, y2) from free text, each pair put in
    order: the first bracketed group of four unsigned numbers ("[0.1, 0.2, 0.3, 0.4]", "(0.1 0.2 0.3 0.4)"),
    else the first four numbers anywhere ("x1=0.1, ..." reads 0.1, ...), each read as written; None if
    there are fewer than four."""
    bracketed = _BRACKETED_BOX.search(text)
    numbers = [float(n) for n in (bracketed.groups() if bracketed else re.findall(_NUMBER, text)[:4])]
    if len(numbers) < 4:
        return None
    x1, y1, x2, y2 = numbers
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes as written, by CoIN's calculate_iou: a box with x2 < x1 or
    y2 < y1 intersects nothing (IoU 0); 0.0 when the union has no area."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def grounding_hit(prediction: str, references: Sequence[str], lenient: bool = False) -> float:
    """CoIN's eval_grounding.py: 1.0 if IoU(predicted box, a reference box) > 0.5, boxes read by
    `official_box` (references without the slip); an unreadable prediction scores 0. Lenient: references
    are read by `parse_box`, and the prediction also counts when its `parse_box` reading (free text,
    corners put in order, the last digit kept) gives IoU > 0.5. Raises ValueError for a reference the
    mode cannot read as four numbers."""
    read_reference = parse_box if lenient else partial(official_box, slip=False)
    boxes = [read_reference(ref) for ref in references]
    if None in boxes:
        raise ValueError(f"grounding reference without a box of four numbers: {references!r}")
    readings = [official_box(prediction.strip())] + ([parse_box(prediction)] if lenient else [])
    return float(any(box is not None and box_iou(box, ref) > 0.5 for box in readings for ref in boxes))


# ---- registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanScorer(Scorer):
    """Corpus score = 100 x the mean per-item judgement. With `relaxed_judge`, "score" and the items
    use it and "strict" reports `judge` alongside."""

    name: str
    judge: Judge
    relaxed_judge: Judge | None = None

    def score_items(self, predictions: list[str], references: list[list[str]]) -> tuple[dict[str, float], list[float]]:
        items = checked_items(predictions, references)
        judged = [(self.relaxed_judge or self.judge)(pred, refs) for pred, refs in items]
        result = {"score": 100 * fmean(judged)}
        if self.relaxed_judge is not None:
            result["strict"] = 100 * fmean(self.judge(pred, refs) for pred, refs in items)
        return result, judged


_JUDGES: dict[str, Judge] = {
    "vqa": vqa_accuracy, "exact": exact_match, "gqa": gqa_match, "ocr": ocr_match, "choice": choice_match,
    "classification": classification_match, "classification_ci": classification_ci_match,
    "grounding": grounding_hit,
}
RELAXABLE = ("vqa", "exact", "gqa", "ocr", "classification", "classification_ci")
SCORER_NAMES: tuple[str, ...] = (*_JUDGES, "caption")


def get_scorer(name: str, relaxed: bool = False, caption_metric: str = "cider", scoring: str = "official",
               meteor: bool = True) -> Scorer:
    """The scorer called `name` (one of SCORER_NAMES) under `scoring` (one of SCORINGS); ValueError naming
    the known ones otherwise. `caption_metric` (one of captions.CAPTION_METRICS) is the caption scorer's
    "score"; `meteor` whether it also computes METEOR (see CaptionScorer)."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; known: {', '.join(SCORINGS)}")
    lenient = scoring == "lenient"
    if name == "caption":
        return CaptionScorer(caption_metric, lenient, meteor)
    if name not in _JUDGES:
        raise ValueError(f"unknown scorer {name!r}; known scorers: {', '.join(SCORER_NAMES)}")
    judge = partial(_JUDGES[name], lenient=lenient)
    return MeanScorer(name, judge, partial(judge, relaxed=True) if relaxed and name in RELAXABLE else None)
