"""Captioning metrics through pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr) on PTB-tokenised text."""

from __future__ import annotations

from functools import cache
from statistics import fmean

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from cvit.eval.items import checked_items

PLACEHOLDER = "emptycaptionplaceholder"


def _one_line(text: str) -> str:
    # The Java tokenizer also breaks lines at \r, \u2028 etc., which would misalign its output lines.
    return " ".join(text.split())


def _tokenized(
    predictions: list[str], references: list[list[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """PTB-tokenised ({item: references}, {item: [prediction]}) as pycocoevalcap wants them. References
    that tokenise to nothing are dropped (ValueError if an item has none left); an empty prediction
    becomes PLACEHOLDER, a word no reference contains (pycocoevalcap assumes non-empty text)."""
    items = checked_items(predictions, references)
    captions: dict[tuple[str, int], list[dict[str, str]]] = {}
    for index, (pred, refs) in enumerate(items):
        captions[("pred", index)] = [{"caption": _one_line(pred)}]
        captions[("ref", index)] = [{"caption": _one_line(ref)} for ref in refs]
    tokens = PTBTokenizer().tokenize(captions)
    gts, res = {}, {}
    for index, (_, refs) in enumerate(items):
        gts[index] = [ref for ref in tokens[("ref", index)] if ref]
        if not gts[index]:
            raise ValueError(f"item {index}: every reference is empty after tokenisation: {refs!r}")
        res[index] = [tokens[("pred", index)][0] or PLACEHOLDER]
    return gts, res


@cache
def _meteor():
    """One METEOR Java process per Python process, started on first use (its first evaluation takes 5-10 s)."""
    return Meteor()


CAPTION_METRICS = ("cider", "mean")


class CaptionScorer:
    """Corpus captioning metrics from pycocoevalcap on PTB-tokenised text (as COCOEvalCap computes
    them): bleu1..bleu4, meteor, rouge_l, cider, each x100, plus "mean" (of those seven, UCIT's caption
    number) and "score" = the `metric` one (cider or mean). CIDEr-D ranges over 0..10, so cider may
    exceed 100; its IDF comes from the corpus's references, so a corpus of one item scores CIDEr 0."""

    name = "caption"

    def __init__(self, metric: str = "cider") -> None:
        if metric not in CAPTION_METRICS:
            raise ValueError(f"unknown caption metric {metric!r}; known: {', '.join(CAPTION_METRICS)}")
        self.metric = metric

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        gts, res = _tokenized(predictions, references)
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        metrics = {f"bleu{n}": value for n, value in enumerate(bleu, start=1)}
        metrics["meteor"] = _meteor().compute_score(gts, res)[0]
        metrics["rouge_l"] = Rouge().compute_score(gts, res)[0]
        metrics["cider"] = Cider().compute_score(gts, res)[0]
        result = {key: 100 * float(value) for key, value in metrics.items()}
        result["mean"] = fmean(result.values())
        result["score"] = result[self.metric]
        return result

    def item_scores(self, predictions: list[str], references: list[list[str]]) -> list[float]:
        """Per-item BLEU-1 in 0..1: the corpus metrics have no per-item form of their own."""
        gts, res = _tokenized(predictions, references)
        return [float(value) for value in Bleu(1).compute_score(gts, res, verbose=0)[1][0]]
