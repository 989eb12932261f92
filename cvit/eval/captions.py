"""Captioning metrics through pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr) on PTB-tokenised text, as
COCOEvalCap computes them (HiDe-LLaVA's / MCITlib's eval_caption.py for UCIT), and SMoLoRA's CIDEr on
untokenised text (its eval_textcaps_cider.py for CVIT)."""

from __future__ import annotations

from functools import cache
from statistics import fmean

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from cvit.eval.items import Item, Scorer, checked_items
from cvit.eval.ptb import ptb_tokenize

Captions = dict[int, list[str]]


def _one_line(text: str) -> str:
    # The Java tokenizer also breaks lines at \r, \u2028 etc., which would misalign its output lines.
    return " ".join(text.split())


def _tokenized(items: list[Item], lenient: bool) -> tuple[Captions, Captions]:
    """PTB-tokenised ({item: references}, {item: [prediction]}) as pycocoevalcap wants them; text that
    tokenises to nothing stays "", as COCOEvalCap leaves it. Lenient drops such references (ValueError
    if an item has none left)."""
    captions: dict[tuple[str, int], list[dict[str, str]]] = {}
    for index, (pred, refs) in enumerate(items):
        captions[("pred", index)] = [{"caption": _one_line(pred)}]
        captions[("ref", index)] = [{"caption": _one_line(ref)} for ref in refs]
    tokens = ptb_tokenize(captions)
    gts, res = {}, {}
    for index, (_, refs) in enumerate(items):
        gts[index] = [ref for ref in tokens[("ref", index)] if ref or not lenient]
        if not gts[index]:
            raise ValueError(f"item {index}: every reference is empty after tokenisation: {refs!r}")
        res[index] = tokens[("pred", index)][:1]
    return gts, res


def _raw(items: list[Item]) -> tuple[Captions, Captions]:
    """({item: references}, {item: [prediction]}) untokenised, as SMoLoRA's eval_*_cider.py pass them."""
    return ({index: list(refs) for index, (_, refs) in enumerate(items)},
            {index: [pred] for index, (pred, _) in enumerate(items)})


@cache
def _meteor():
    """One METEOR Java process per Python process, started on first use (its first evaluation takes 5-10 s)."""
    return Meteor()


CAPTION_METRICS = ("cider", "mean", "cider_raw")


class CaptionScorer(Scorer):
    """Corpus captioning metrics from pycocoevalcap on PTB-tokenised text (as COCOEvalCap computes
    them): bleu1..bleu4, meteor, rouge_l, cider, each x100, plus "mean" (of those seven, UCIT's caption
    number) and "score" = the `metric` one. `meteor=False` skips METEOR (and so "mean") unless `metric` is
    "mean". Metric "cider_raw" also reports CIDEr on untokenised,
    whitespace-split text (case and punctuation kept, SMoLoRA's eval_textcaps_cider.py) as "cider_raw"
    and makes it the "score". CIDEr-D ranges over 0..10, so cider may exceed 100; its IDF comes from the
    corpus's references, so a corpus of one item scores CIDEr 0.
    `lenient`: references that tokenise to nothing are dropped (they lower CIDEr's mean over references),
    and "score" for cider_raw is the PTB-tokenised cider (lowercased, punctuation dropped)."""

    name = "caption"

    def __init__(self, metric: str = "cider", lenient: bool = False, meteor: bool = True) -> None:
        if metric not in CAPTION_METRICS:
            raise ValueError(f"unknown caption metric {metric!r}; known: {', '.join(CAPTION_METRICS)}")
        self.metric = metric
        self.lenient = lenient
        self.meteor = meteor or metric == "mean"

    def score_items(self, predictions: list[str], references: list[list[str]]) -> tuple[dict[str, float], list[float]]:
        """Corpus metrics and per-item BLEU-1 in 0..1 (the corpus metrics have no per-item form of their own)."""
        items = checked_items(predictions, references)
        gts, res = _tokenized(items, self.lenient)
        bleu, per_item = Bleu(4).compute_score(gts, res, verbose=0)
        metrics = {f"bleu{n}": value for n, value in enumerate(bleu, start=1)}
        if self.meteor:
            metrics["meteor"] = _meteor().compute_score(gts, res)[0]
        metrics["rouge_l"] = Rouge().compute_score(gts, res)[0]
        metrics["cider"] = Cider().compute_score(gts, res)[0]
        result = {key: 100 * float(value) for key, value in metrics.items()}
        if self.meteor:
            result["mean"] = fmean(result.values())
        if self.metric == "cider_raw":
            result["cider_raw"] = 100 * float(Cider().compute_score(*_raw(items))[0])
        result["score"] = result["cider" if self.metric == "cider_raw" and self.lenient else self.metric]
        return result, [float(value) for value in per_item[0]]
