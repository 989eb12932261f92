"""LLaCA's instruction codebook (llaca.txt Sec. 4.4, App. H-I): groups of instruction texts, each group
owning one parameter set, matched by TF-IDF cosine similarity.

For every (instruction, group instruction) pair the released code (`instruct/LoRASelect.py`) fits a scikit-learn
`TfidfVectorizer(stop_words="english")` on the two strings and takes their cosine: 2.5 ms a pair, hours for a real
test set against a real group. `similarity_matrix` gives the same numbers for all pairs at once from a closed form
(see there). A group's similarity to a list of instructions is then
  max   the maximum over the pairs (paper, Sec. 4.4 step 3 and Algorithm 1: "the maximum similarity")
  mean  the mean over the pairs (released code).
A task reuses the most similar group when that similarity reaches the threshold, else it opens a new group.
Test instructions are routed to the most similar group; one that reaches no group's threshold goes to
  best          the most similar group all the same (paper: test routing has no threshold)
  created_last  the group created last (released code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

# A two-document fit (smooth idf): idf = ln(3 / (1 + df)) + 1, so a term in both documents weighs 1 and a term in
# one weighs 1 + ln(3/2).
ONE_SIDED = 1.0 + math.log(1.5)
ANALYZER = TfidfVectorizer(stop_words="english").build_analyzer()  # lowercase, 2+-character words, stop words out
CHUNK = 512  # rows of `firsts` per dense block


def pair_similarity(first: str, second: str) -> float:
    """The released code's form for one pair: a TfidfVectorizer fitted on the two texts, their rows' cosine (1 for
    equal texts, 0 without a word). 2.5 ms a pair: the reference `similarity_matrix` is checked against (tests,
    `make bench`)."""
    if first == second:
        return 1.0
    try:
        vectors = TfidfVectorizer(stop_words="english").fit_transform([first, second])
    except ValueError:  # no word left after stop words: nothing to compare
        return 0.0
    return float((vectors[0] @ vectors[1].T).toarray()[0, 0])  # rows are L2-normalised: dot = cosine


def similarity_matrix(firsts: list[str], seconds: list[str]) -> np.ndarray:
    """[len(firsts), len(seconds)] float64: for each pair, the cosine of the two texts' TF-IDF vectors fitted on the
    pair alone (1 for equal texts, 0 when they share no word), as the released code computes it pair by pair.

    Closed form, from each text's term counts c over one shared vocabulary: with w = 1 on shared terms and
    w = ONE_SIDED elsewhere, cos(a, b) = sum_shared c_a c_b / sqrt(sum_a (c_a w)^2 * sum_b (c_b w)^2), where
    sum_a (c_a w)^2 = ONE_SIDED^2 sum_a c_a^2 - (ONE_SIDED^2 - 1) sum_shared c_a^2: three sparse products."""
    try:
        counts = CountVectorizer(analyzer=ANALYZER).fit([*firsts, *seconds])
    except ValueError:  # not one word in any text
        return np.array([[float(a == b) for b in seconds] for a in firsts]).reshape(len(firsts), len(seconds))
    a, b = (counts.transform(texts).astype(np.float64).tocsr() for texts in (firsts, seconds))
    a2, b2 = a.multiply(a).tocsr(), b.multiply(b).tocsr()
    a_in, b_in = (a > 0).astype(np.float64), (b > 0).astype(np.float64)
    square = ONE_SIDED ** 2
    b_norm = square * np.asarray(b2.sum(1)).ravel()
    rows = []
    for start in range(0, a.shape[0], CHUNK):
        block = slice(start, start + CHUNK)
        dot = (a[block] @ b.T).toarray()
        a_norm = square * np.asarray(a2[block].sum(1)) - (square - 1) * (a2[block] @ b_in.T).toarray()
        b_side = b_norm[None, :] - (square - 1) * (a_in[block] @ b2.T).toarray()
        denominator = np.sqrt(a_norm * b_side)
        rows.append(np.divide(dot, denominator, out=np.zeros_like(dot), where=denominator > 0))
    matrix = np.vstack(rows) if rows else np.zeros((0, len(seconds)))
    equal = np.array([[x == y for y in seconds] for x in firsts], dtype=bool).reshape(matrix.shape)
    matrix[equal] = 1.0
    return matrix


def unique(texts: list[str]) -> list[str]:
    """`texts` without repeats, in first-seen order."""
    return list(dict.fromkeys(texts))


@dataclass
class Group:
    adapter: str  # the adapter (parameter set) of this group in the module's pool
    instructions: list[str] = field(default_factory=list)


SIMILARITIES = {"max": np.max, "mean": np.mean}
FALLBACKS = ("best", "created_last")


@dataclass
class InstructionCodebook:
    groups: list[Group] = field(default_factory=list)
    similarity: str = "max"  # one of SIMILARITIES: how pair similarities make a group's similarity

    def similarities(self, instructions: list[str]) -> list[float]:
        """Similarity of `instructions` (repeats ignored) to each group, in group order."""
        return [float(row) for row in self.row_similarities(unique(instructions), pooled=True)]

    def row_similarities(self, texts: list[str], pooled: bool = False) -> np.ndarray:
        """[len(texts), groups]: each text's similarity to each group (max or mean over the group's instructions);
        `pooled`: [groups], over every (text, group instruction) pair."""
        if not self.groups:
            return np.zeros(0 if pooled else (len(texts), 0))
        columns = [text for group in self.groups for text in group.instructions]
        pairs = similarity_matrix(texts, columns)
        reduce = SIMILARITIES[self.similarity]
        ends = np.cumsum([len(group.instructions) for group in self.groups])
        blocks = np.split(pairs, ends[:-1], axis=1)
        return np.stack([reduce(block, axis=None if pooled else 1) for block in blocks], axis=-1)

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

    def serving(self, scores: np.ndarray, threshold: float, fallback: str) -> np.ndarray:
        """The serving group of each row of [..., groups] `scores`: the most similar (the first of equal maxima), or
        under `fallback` created_last the group created last where none reaches `threshold`."""
        best = scores.argmax(-1)
        reached = np.take_along_axis(scores, best[..., None], -1)[..., 0] >= threshold
        return np.where(reached | (fallback == "best"), best, len(self.groups) - 1)

    def route_one(self, instructions: list[str], threshold: float, fallback: str) -> int:
        """The group that serves `instructions` together at test."""
        return int(self.serving(self.row_similarities(unique(instructions), pooled=True), threshold, fallback))

    def route(self, instructions: list[str], threshold: float, fallback: str) -> list[int]:
        """The group of each test instruction, each routed on its own."""
        texts = unique(instructions)
        by_text = dict(zip(texts, self.serving(self.row_similarities(texts), threshold, fallback).tolist(),
                           strict=True))
        return [by_text[text] for text in instructions]

    def state(self) -> dict:
        return {"groups": [{"adapter": g.adapter, "instructions": g.instructions} for g in self.groups]}

    @classmethod
    def from_state(cls, state: dict, similarity: str = "max") -> InstructionCodebook:
        groups = [Group(g["adapter"], list(g["instructions"])) for g in state.get("groups", [])]
        return cls(groups, similarity)
