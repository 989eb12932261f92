"""LLaCA's instruction codebook: grouping decisions and routing on hand-made instruction sets."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from cvit.methods.codebook import InstructionCodebook, pair_similarity, similarity_matrix

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
BOX = "Please provide the bounding box coordinate of the region this sentence describes."
OBJECT = "Answer the object in the image using a single word or phrase."


def test_all_pairs_at_once_equal_the_pairwise_fits():
    texts = [SHORT, LETTER, BOX, OBJECT, "", "the a an", "Word word WORD, word!", "Answer answer question",
             "x y", "Describe the image briefly.", "What is the colour of the car? Answer the question.",
             "Provide a one-sentence caption for the provided image.", "answer"]
    matrix = similarity_matrix(texts, texts[::-1] + ["Answer the question using a single word or phrase."])
    expected = [[pair_similarity(a, b) for b in texts[::-1] + [SHORT]] for a in texts]
    assert matrix.shape == (len(texts), len(texts) + 1)
    assert np.abs(matrix - np.array(expected)).max() < 1e-9
    assert matrix[0, -1] == 1.0 and ((0 < matrix) & (matrix < 1)).sum() > 10  # the same text; shared words
    assert similarity_matrix(["the", "a"], ["an"]).tolist() == [[0.0], [0.0]]  # no word in any text


def test_pair_similarity_is_tfidf_cosine_fitted_on_the_pair():
    vectors = TfidfVectorizer(stop_words="english").fit_transform([SHORT, OBJECT]).toarray()
    by_hand = float(vectors[0] @ vectors[1]) / float((vectors[0] ** 2).sum() ** 0.5 * (vectors[1] ** 2).sum() ** 0.5)
    assert pair_similarity(SHORT, OBJECT) == pytest.approx(by_hand)
    assert 0 < by_hand < 0.9
    # English stop words do not count (the released code's TfidfVectorizer(stop_words="english")), and order does not
    assert pair_similarity("Answer the question with a word.", "Answer this question in one word.") == \
        pytest.approx(1.0)
    assert pair_similarity(SHORT, OBJECT) == pytest.approx(pair_similarity(OBJECT, SHORT))
    assert pair_similarity(SHORT, BOX) == 0.0  # no shared word


def test_coin_origin_templates_group_as_in_the_paper():
    """CoIN's Origin templates at 0.9: ScienceQA alone; the VQA tasks share one group; ImageNet and
    Grounding each open their own (LLaCA Table 10: four groups)."""
    stream = [("scienceqa", LETTER), ("textvqa", SHORT), ("imagenet", OBJECT), ("gqa", SHORT),
              ("vizwiz", SHORT), ("grounding", BOX), ("vqav2", SHORT), ("ocrvqa", SHORT)]
    codebook, groups = InstructionCodebook(), {}
    for name, template in stream:
        index, _ = codebook.match([template] * 3, threshold=0.9)
        groups[name] = codebook.add(index, f"adapter-{name}", [template])
    assert len(codebook.groups) == 4
    assert groups["textvqa"] == groups["gqa"] == groups["vizwiz"] == groups["vqav2"] == groups["ocrvqa"]
    assert len({groups["scienceqa"], groups["textvqa"], groups["imagenet"], groups["grounding"]}) == 4
    assert codebook.groups[groups["gqa"]].adapter == "adapter-textvqa"  # retrained, not duplicated
    assert codebook.groups[groups["gqa"]].instructions == [SHORT]  # repeats are not appended


def test_mean_over_pairs_decides_reuse_and_threshold():
    codebook = InstructionCodebook(similarity="mean")
    codebook.add(None, "a", [SHORT, "Respond with one word."])
    similar = ["Answer the question using a single word.", SHORT]
    expected = (pair_similarity(similar[0], SHORT) + pair_similarity(similar[0], "Respond with one word.")
                + 1.0 + pair_similarity(SHORT, "Respond with one word.")) / 4
    assert codebook.similarities(similar) == pytest.approx([expected])
    assert codebook.match(similar, threshold=expected)[0] == 0
    assert codebook.match(similar, threshold=expected + 1e-6)[0] is None


def test_maximum_over_pairs_is_the_paper_rule():
    """Paper: the maximum pair similarity; one identical instruction among unrelated ones reaches 1."""
    group = [SHORT, "Respond with one word."]
    similar = ["Describe the scene in detail.", SHORT]
    pairs = [pair_similarity(t, g) for t in similar for g in group]
    paper, released = InstructionCodebook(similarity="max"), InstructionCodebook(similarity="mean")
    for codebook in (paper, released):
        codebook.add(None, "a", group)
    assert max(pairs) == 1.0 and paper.similarities(similar) == pytest.approx([1.0])
    assert released.similarities(similar) == pytest.approx([sum(pairs) / 4])
    assert paper.match(similar, threshold=0.9)[0] == 0 and released.match(similar, threshold=0.9)[0] is None


def test_routing_below_the_threshold_takes_the_best_or_the_group_created_last():
    codebook = InstructionCodebook()
    codebook.add(None, "short", [SHORT])
    codebook.add(None, "letters", [LETTER])
    codebook.add(None, "boxes", [BOX])
    codebook.add(0, "short", [OBJECT])  # retrained last: not the group created last
    near_object = "Name the object in the image."
    assert 0 < pair_similarity(near_object, OBJECT) < 0.9 and pair_similarity(near_object, BOX) == 0
    texts = [SHORT, LETTER, near_object, "Tell me a story."]
    assert codebook.route(texts, threshold=0.9, fallback="best") == [0, 1, 0, 0]
    assert codebook.route(texts, threshold=0.9, fallback="created_last") == [0, 1, 2, 2]


def test_state_round_trip():
    codebook = InstructionCodebook()
    codebook.add(None, "default", [SHORT])
    codebook.add(0, "default", [OBJECT])
    again = InstructionCodebook.from_state(codebook.state())
    assert again == codebook and again.groups[0].instructions == [SHORT, OBJECT]
