"""LLaCA's instruction codebook (llaca.txt Sec. 4.4, App. H-I): groups of instruction texts, each group
owning one parameter set, matched by TF-IDF cosine similarity.

For every (instruction, group instruction) pair a scikit-learn `TfidfVectorizer(stop_words="english")` is
fitted on the two strings and their cosine taken, as the released code does (`instruct/LoRASelect.py`). A
group's similarity to a list of instructions is then
  max   the maximum over the pairs (paper, Sec. 4.4 step 3 and Algorithm 1: "the maximum similarity")
  mean  the mean over the pairs (released code).
A task reuses the most similar group when that similarity reaches the threshold, else it opens a new group.
Test instructions are routed to the most similar group; one that reaches no group's threshold goes to
  best          the most similar group all the same (paper: test routing has no threshold)
  created_last  the group created last (released code).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from statistics import fmean

from sklearn.feature_extraction.text import TfidfVectorizer


@cache
def pair_similarity(first: str, second: str) -> float:
    """Cosine similarity of two texts' TF-IDF vectors fitted on the pair (0 when they share no known word)."""
    if first == second:
        return 1.0
    try:
        vectors = TfidfVectorizer(stop_words="english").fit_transform([first, second])
    except ValueError:  # no word left after stop words: nothing to compare
        return 0.0
    return float((vectors[0] @ vectors[1].T).toarray()[0, 0])  # rows are L2-normalised: dot = cosine


def unique(texts: list[str]) -> list[str]:
    """`texts` without repeats, in first-seen order."""
    return list(dict.fromkeys(texts))


@dataclass
class Group:
    adapter: str  # the adapter (parameter set) of this group in the module's pool
    instructions: list[str] = field(default_factory=list)


SIMILARITIES = {"max": max, "mean": fmean}
FALLBACKS = ("best", "created_last")


@dataclass
class InstructionCodebook:
    groups: list[Group] = field(default_factory=list)
    similarity: str = "max"  # one of SIMILARITIES: how pair similarities make a group's similarity

    def similarities(self, instructions: list[str]) -> list[float]:
        """Similarity of `instructions` (repeats ignored) to each group, in group order."""
        texts, reduce = unique(instructions), SIMILARITIES[self.similarity]
        return [reduce([pair_similarity(t, g) for t in texts for g in group.instructions]) for group in self.groups]

    def match(self, instructions: list[str], threshold: float) -> tuple[int | None, float]:
        """(index of the group to retrain, its similarity), or (None, best similarity) for a new group."""
        scores = self.similarities(instructions)
        if not scores:
            return None, 0.0
        best = max(range(len(scores)), key=scores.__getitem__)
        return (best if scores[best] >= threshold else None), scores[best]

    def add(self, index: int | None, adapter: str, instructions: list[str]) -> int:
        """Record a trained task: append its new instructions to group `index`, or open a new group
        (index None) owning `adapter`. Returns the group's index."""
        if index is None:
            self.groups.append(Group(adapter))
            index = len(self.groups) - 1
        group = self.groups[index]
        group.instructions = unique(group.instructions + instructions)
        return index

    def route_one(self, instructions: list[str], threshold: float, fallback: str) -> int:
        """The group that serves `instructions` at test (see the module docstring for `fallback`)."""
        scores = self.similarities(instructions)
        best = max(range(len(scores)), key=scores.__getitem__)
        return best if scores[best] >= threshold or fallback == "best" else len(self.groups) - 1

    def route(self, instructions: list[str], threshold: float, fallback: str) -> list[int]:
        """The group of each test instruction, routed one instruction at a time."""
        chosen = {text: self.route_one([text], threshold, fallback) for text in unique(instructions)}
        return [chosen[text] for text in instructions]

    def state(self) -> dict:
        return {"groups": [{"adapter": g.adapter, "instructions": g.instructions} for g in self.groups]}

    @classmethod
    def from_state(cls, state: dict, similarity: str = "max") -> InstructionCodebook:
        groups = [Group(g["adapter"], list(g["instructions"])) for g in state.get("groups", [])]
        return cls(groups, similarity)
