"""Scorers on hand-made cases with hand-computed expectations."""

from __future__ import annotations

import pytest

from cvit.eval.normalize import normalize_answer
from cvit.eval.scorers import SCORER_NAMES, box_iou, extract_choice, get_scorer, parse_box


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Dog.", "dog"),
        ("  an   apple ", "apple"),
        ("Two dogs!", "2 dogs"),
        ("ten.", "10"),
        ("0.5", "0.5"),
        ("1,000", "1000"),
        ("10:30", "10:30"),
        ("u.s.a.", "usa"),
        ("black/white", "black white"),
        ("yes, it is", "yes it is"),
        ("dont", "don't"),
        ("Don\u2019t", "don\u2019t"),  # only the ASCII apostrophe is known
        ("CAFÉ (Naïve)", "café naïve"),  # " (" touches a space: deleted; ")" does not: a space
        ("«Bonjour»", "«bonjour»"),  # not in the punctuation list
        ("a-b -c", "ab c"),  # " -" occurs, so every "-" is deleted
        ("x-ray", "x ray"),
        ("The poster shows a 10% discount.", "poster shows 10% discount"),
        ("it's red?", "it 's red"),
        ("none", "0"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_scorer_names_and_unknown_scorer():
    assert set(SCORER_NAMES) == {
        "vqa", "exact", "gqa", "ocr", "choice", "classification", "classification_ci", "grounding", "caption"
    }
    with pytest.raises(ValueError, match="known scorers: vqa, exact.*caption"):
        get_scorer("bleu")


def test_inputs_are_checked():
    scorer = get_scorer("exact")
    with pytest.raises(ValueError, match="2 predictions but 1"):
        scorer.score(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="item 0"):
        scorer.score(["a"], [[]])
    with pytest.raises(ValueError, match="item 0"):
        scorer.score(["a"], ["a"])  # a bare string, not a list of references
    with pytest.raises(ValueError, match="no predictions"):
        scorer.score([], [])


# ---- vqa --------------------------------------------------------------------------------------------


def test_vqa_with_fewer_than_ten_answers_is_case_insensitive_exact_match():
    scorer = get_scorer("vqa")  # CoIN's single-answer VQAv2 / VizWiz files: pred.upper() == answer.upper()
    predictions = ["Two", "a dog.", "DOG", "CAFÉ", "cafe", "", "no", " Yes "]
    references = [["2"], ["dog"], ["dog"], ["café"], ["café"], ["yes"], ["yes", "no"], ["yes"]]
    assert scorer.item_scores(predictions, references) == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert scorer.score(predictions, references) == {"score": pytest.approx(100 * 4 / 8)}


def test_vqa_soft_accuracy_with_ten_answers():
    scorer = get_scorer("vqa")
    two = ["2", "two", "3", "3", "3", "3", "3", "3", "3", "3"]  # "2" and "two" both normalise to "2"
    # 2 matches: leaving out a matching answer leaves 1 -> 1/3 (twice); leaving out another leaves 2 -> 2/3
    # (8 times); mean = (2 * 1/3 + 8 * 2/3) / 10 = 18/30 = 0.6
    assert scorer.item_scores(["2"], [two]) == [pytest.approx(0.6)]
    # 3 matches: (3 * 2/3 + 7 * min(1, 3/3)) / 10 = 9/10
    assert scorer.item_scores(["3"], [["3"] * 3 + ["4"] * 7]) == [pytest.approx(0.9)]
    # 1 match: (1 * 0 + 9 * 1/3) / 10 = 0.3;  4 or more matches: every subset keeps >= 3 -> 1.0
    assert scorer.item_scores(["4"], [["4"] + ["5"] * 9]) == [pytest.approx(0.3)]
    assert scorer.item_scores(["5"], [["4"] + ["5"] * 9]) == [pytest.approx(1.0)]
    # corpus score = 100 * mean(0.6, 0.3) = 45
    assert scorer.score(["2", "4"], [two, ["4"] + ["5"] * 9])["score"] == pytest.approx(45.0)


def test_vqa_relaxed_reports_relaxed_score_and_strict():
    predictions = ["there are two dogs", "dog", "hotdog stand"]
    references = [["2 dogs"], ["dog"], ["dog"]]
    assert get_scorer("vqa").score(predictions, references) == {"score": pytest.approx(100 / 3)}
    relaxed = get_scorer("vqa", relaxed=True)
    # whole words only: "hotdog" does not contain the word "dog"
    assert relaxed.item_scores(predictions, references) == [1.0, 1.0, 0.0]
    assert relaxed.score(predictions, references) == {
        "score": pytest.approx(200 / 3), "strict": pytest.approx(100 / 3)
    }


def test_relaxed_soft_accuracy_counts_contained_answers():
    # "it is red" contains "red" (3 answers) -> same as 3 exact matches: 0.9
    answers = ["red"] * 3 + ["blue"] * 7
    assert get_scorer("vqa", relaxed=True).item_scores(["it is red"], [answers]) == [pytest.approx(0.9)]


# ---- exact and classification -------------------------------------------------------------------------


def test_exact_match():
    scorer = get_scorer("exact")
    predictions = ["Paris.", "  PARIS ", "the Paris", "Straße", "paris!"]
    assert scorer.item_scores(predictions, [["paris"]] * 5) == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert scorer.item_scores(["STRASSE"], [["Straße"]]) == [1.0]  # str.upper, as the original
    relaxed = get_scorer("exact", relaxed=True).score(predictions, [["paris"]] * 5)
    assert relaxed == {"score": pytest.approx(80.0), "strict": pytest.approx(20.0)}  # not "Straße"


def test_gqa_and_ocr_rules():
    gqa = get_scorer("gqa")
    predictions = ["Yes.", "yes", " Left..", "the left", ""]
    assert gqa.item_scores(predictions, [["yes"], ["yes"], ["left"], ["left"], ["no"]]) == [1.0, 1.0, 1.0, 0.0, 0.0]
    ocr = get_scorer("ocr")
    predictions = ["The Hobbit", "Unanswerable", "unanswerable", "Yes", "yes."]
    references = [["the hobbit"], ["Unanswerable"], ["unanswerable"], ["yes"], ["yes"]]
    assert ocr.item_scores(predictions, references) == [1.0, 0.0, 1.0, 1.0, 0.0]


def test_classification():
    scorer = get_scorer("classification")
    predictions = ["Golden Retriever.", "a tabby cat", "It is a golden retriever", "cat"]
    references = [["golden retriever"], ["tabby cat", "cat"], ["golden retriever"], ["dog"]]
    # CoIN: either string contains the other, case-sensitive
    assert scorer.item_scores(predictions, references) == [0.0, 1.0, 1.0, 0.0]
    assert scorer.item_scores(["gold", "", "retriever"], [["golden retriever"]] * 3) == [1.0, 0.0, 1.0]
    assert get_scorer("classification_ci").item_scores(predictions, references) == [1.0, 1.0, 1.0, 0.0]
    relaxed = get_scorer("classification", relaxed=True)
    assert relaxed.item_scores(predictions, references) == [1.0, 1.0, 1.0, 0.0]
    assert relaxed.score(predictions, references) == {"score": 75.0, "strict": 50.0}


# ---- multiple choice ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("A", "A"), ("A.", "A"), ("b", "B"), ("(B)", "B"), (" C) ", "C"), ("D. a red car", "D"),
        ("(C) the moon", "C"), ("The answer is A", "A"), ("the answer is (B).", "B"), ("Answer: C", "C"),
        ("The correct option is D.", "D"), ("a", "A"), ("E. 3/4", "E"),
        # the official rule's quirks: the first single-character word, whatever it is
        ("I think B is right", "I"), ("it's C", "S"), ("2. B", "2"), ("É", "É"),
        ("Apple", None), ("none of these", None), ("", None), ("BC", None),
    ],
)
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


def test_choice_scores():
    scorer = get_scorer("choice", relaxed=True)  # relaxed is ignored by choice
    predictions = ["A", "A.", "The answer is A", "(B)", "none of these", ""]
    references = [["A"], ["A"], ["A"], ["B"], ["A"], ["A"]]
    assert scorer.item_scores(predictions, references) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert scorer.score(predictions, references) == {"score": pytest.approx(400 / 6)}
    assert scorer.item_scores(["B"], [["C"]]) == [0.0]


# ---- grounding -----------------------------------------------------------------------------------------


def test_parse_box():
    assert parse_box("[0.25, 0.5, 0.75, 1.0]") == (0.25, 0.5, 0.75, 1.0)
    assert parse_box("0.25 0.5,0.75 ,1") == (0.25, 0.5, 0.75, 1.0)
    assert parse_box("The box is [.1, 0.2, 0.3, 0.4] I think, 0.9") == (0.1, 0.2, 0.3, 0.4)
    assert parse_box("[0.75, 1.0, 0.25, 0.5]") == (0.25, 0.5, 0.75, 1.0)  # swapped corners are ordered
    assert parse_box("[0.1, 0.2, 0.3]") is None
    assert parse_box("") is None
    assert parse_box("2 people: [ 0.1 ,0.2,0.3 , 0.4 ].") == (0.1, 0.2, 0.3, 0.4)  # the bracketed group first
    assert parse_box("(0.1 0.2 0.3 0.4)") == (0.1, 0.2, 0.3, 0.4)
    assert parse_box("x1=0.1, y1=0.2, x2=0.3, y2=0.4") == (0.1, 0.2, 0.3, 0.4)  # names' digits skipped


def test_box_iou():
    # [0,0,2,2] and [1,1,3,3]: intersection 1x1 = 1, union 4 + 4 - 1 = 7
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # no area


def test_grounding_scores():
    scorer = get_scorer("grounding")
    ref = ["[0.25, 0.5, 0.75, 1.0]"]
    predictions = [
        "[0.25, 0.5, 0.75, 1.0]",
        "The box is 0.25 0.5,0.75 ,1 .",
        "[0.75, 1.0, 0.25, 0.5]",
        "[0.25, 0.5, 0.75, 0.75]",  # IoU = 0.25*0.5 / (0.5*0.5) = 0.5, not > 0.5
        "[0.25, 0.5, 0.75, 0.8]",  # IoU = 0.3 / 0.5 = 0.6
        "no box here",
        "",
    ]
    assert scorer.item_scores(predictions, [ref] * 7) == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert scorer.score(predictions, [ref] * 7)["score"] == pytest.approx(400 / 7)
    with pytest.raises(ValueError, match="grounding reference"):
        scorer.score(["[0, 0, 1, 1]"], [["a cat"]])


def test_empty_and_unicode_outputs_score_zero_without_error():
    for name in ("vqa", "exact", "choice", "classification", "grounding"):
        scorer = get_scorer(name)
        reference = {"grounding": ["[0, 0, 1, 1]"], "choice": ["A"]}.get(name, ["yes"])
        assert scorer.score(["", "\u00e9\u65e5\u672c \U0001f600"], [reference, reference]) == {"score": 0.0}


def test_empty_prediction_never_matches_a_reference_that_normalises_to_nothing():
    assert normalize_answer("A") == ""  # the article is dropped
    for name in ("vqa", "classification"):
        assert get_scorer(name, relaxed=True).item_scores(["", "the"], [["A"], ["A"]]) == [0.0, 0.0]


# ---- captions ------------------------------------------------------------------------------------------

CAPTION_REFS = [
    ["a dog runs on the grass", "a brown dog running in a park"],
    ["a man rides a red bike down the street", "a person on a bicycle"],
    ["two cats sleep on a sofa", "cats sleeping on a couch"],
]

# CAPTION_REFS' first captions with line breaks inside, which the Java tokenizer would split on
LINE_BREAKS = [
    "a dog runs\ron the grass", "a man rides a red\u2028bike down the street", "two cats sleep\non a sofa"
]


@pytest.fixture(scope="module")
def caption_scores():
    """Scored once per module: the METEOR Java process takes seconds to start."""
    scorer = get_scorer("caption")
    identical = [refs[0] for refs in CAPTION_REFS]
    unrelated = ["a plate of food on a table", "an airplane in the blue sky", "a clock on a tower"]
    with_empty = ["a dog runs on the grass", "", "..."]
    return {
        "identical": scorer.score(identical, CAPTION_REFS),
        "unrelated": scorer.score(unrelated, CAPTION_REFS),
        "empty": scorer.score(with_empty, CAPTION_REFS),
        "empty_items": scorer.item_scores(with_empty, CAPTION_REFS),
        "line_breaks": scorer.score(LINE_BREAKS, CAPTION_REFS),
    }


def test_caption_keys_and_exact_match(caption_scores):
    scores = caption_scores["identical"]
    assert set(scores) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "mean", "score"}
    assert scores["score"] == scores["cider"]
    assert scores["bleu1"] == pytest.approx(100.0, abs=1e-4)
    assert scores["bleu4"] == pytest.approx(100.0, abs=1e-4)
    assert scores["rouge_l"] == pytest.approx(100.0)
    seven = [scores[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")]
    assert scores["mean"] == pytest.approx(sum(seven) / 7)
    assert caption_scores["line_breaks"]["bleu1"] == pytest.approx(100.0, abs=1e-4)


def test_caption_identical_beats_unrelated(caption_scores):
    identical, unrelated = caption_scores["identical"], caption_scores["unrelated"]
    assert identical["cider"] > unrelated["cider"] + 100
    assert identical["meteor"] > unrelated["meteor"]
    assert identical["bleu4"] > unrelated["bleu4"] + 50


def test_caption_empty_predictions_do_not_crash(caption_scores):
    empty = caption_scores["empty"]
    assert 0 < empty["bleu1"] < caption_scores["identical"]["bleu1"]
    items = caption_scores["empty_items"]
    assert len(items) == 3
    assert items[0] == pytest.approx(1.0, abs=1e-6)  # per-item BLEU-1 of an exact match
    assert items[1] == pytest.approx(0.0, abs=1e-6) and items[2] == pytest.approx(0.0, abs=1e-6)
