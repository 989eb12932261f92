"""Instruction following (SMoLoRA's MIF): does an output have the form the task's instruction asks
for, right or wrong? Rules as SMoLoRA's released `eval_*_instruction.py` judge them:

- letter (multiple choice): the stripped output, upper-cased, is a single letter A-Z;
- short (short answer, classification): at most two words, or equal to a reference ignoring case;
- caption: ends with "." and has more than four words, or ends with "." and is a substring of a
  reference ignoring case;
- box (grounding, a kit rule: SMoLoRA has no grounding task): the output is one box of four numbers in
  [0, 1], optionally bracketed, with nothing else around it;
- none: not judged.

A task's rate is 100 x the share of outputs that follow; MIF is the mean of the tasks' rates.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from statistics import fmean

from cvit.eval.items import checked_items

MIF_RULES = ("letter", "short", "caption", "box", "none")
_RULE_OF_SCORER = {"choice": "letter", "caption": "caption", "grounding": "box"}  # all others: short
_NUMBER = r"\s*(\d+(?:\.\d*)?|\.\d+)\s*"
_BOX_ONLY = re.compile(r"\[?" + ",".join([_NUMBER] * 4) + r"\]?\.?")


def default_rule(scorer: str) -> str:
    """The rule for a task scored by `scorer`: choice -> letter, caption -> caption, grounding -> box,
    the short-answer scorers -> short."""
    return _RULE_OF_SCORER.get(scorer, "short")


def follows(rule: str, output: str, references: Sequence[str]) -> bool:
    """Whether `output` follows the instruction form `rule` (one of MIF_RULES except none)."""
    text = output.strip()
    if rule == "letter":
        return len(text) == 1 and text.upper() in string.ascii_uppercase
    if rule == "short":
        return len(text.split()) <= 2 or any(text.lower() == ref.lower() for ref in references)
    if rule == "caption":
        return text.endswith(".") and (len(text.split()) > 4 or any(text.lower() in ref.lower() for ref in references))
    if rule == "box":
        match = _BOX_ONLY.fullmatch(text)
        return match is not None and all(float(value) <= 1 for value in match.groups())
    raise ValueError(f"unknown instruction-following rule {rule!r}; known: {', '.join(MIF_RULES)}")


def following_verdicts(rule: str, outputs: Sequence[str], references: Sequence[Sequence[str]]) -> list[bool] | None:
    """Per output, whether it follows `rule`; None for rule "none"."""
    if rule == "none":
        return None
    return [follows(rule, out, refs) for out, refs in checked_items(outputs, references)]


def mean_following(rates: Iterable[float | None]) -> float | None:
    """MIF: the mean of the judged tasks' rates (None: a task not judged); None if no task is judged."""
    judged = [rate for rate in rates if rate is not None]
    return fmean(judged) if judged else None
