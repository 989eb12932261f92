"""Scorers on hand-made cases with hand-computed expectations."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from cvit.config.validate import validate_config
from cvit.data.stream import Task
from cvit.errors import ConfigError
from cvit.eval.normalize import normalize_answer
from cvit.eval.scorers import (
    SCORER_NAMES,
    SCORINGS,
    MeanScorer,
    box_iou,
    extract_choice,
    get_scorer,
    official_box,
    parse_box,
)
from cvit.run.evaluate import score_outputs
from tests.writes import recorded_writes


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


def test_scoring_switch_values():
    assert SCORINGS == ("official", "lenient")
    with pytest.raises(ValueError, match="unknown scoring 'strict'; known: official, lenient"):
        get_scorer("exact", scoring="strict")


def test_eval_scoring_is_validated(small_config):
    cfg, sources = small_config("eval.scoring=strict")
    with pytest.raises(ConfigError, match=r"key 'eval.scoring': 'strict' is not one of official, lenient"):
        validate_config(cfg, sources)


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
    # "" in "golden retriever" is True in the original, so an empty output counts (was 0.0 in the kit)
    assert scorer.item_scores(["gold", "", "retriever"], [["golden retriever"]] * 3) == [1.0, 1.0, 1.0]
    assert get_scorer("classification_ci").item_scores(predictions, references) == [1.0, 1.0, 1.0, 0.0]
    relaxed = get_scorer("classification", relaxed=True)
    assert relaxed.item_scores(predictions, references) == [1.0, 1.0, 1.0, 0.0]
    assert relaxed.score(predictions, references) == {"score": 75.0, "strict": 50.0}


def test_references_are_compared_as_stored_officially():
    # CoIN's eval_vizwiz / eval_vqav2 / eval_ocrvqa compare pred to the answer without stripping it:
    # "PARIS" == "PARIS " is False -> 0; lenient strips the reference -> 1
    for name, prediction, reference in [("exact", "paris", "paris "), ("vqa", "yes", "yes\n"),
                                        ("ocr", "The Hobbit", " the hobbit")]:
        assert get_scorer(name).item_scores([prediction], [[reference]]) == [0.0]
        assert get_scorer(name, scoring="lenient").item_scores([prediction], [[reference]]) == [1.0]


def test_gqa_compares_with_the_answer_as_stored_officially():
    # convert_gqa_for_eval: "Yes.".rstrip(".").lower() = "yes"; eval_gqa: "yes" == "Yes" is False -> 0;
    # lenient lower-cases and strips the answer too: "yes" == "yes" -> 1
    predictions, references = ["Yes.", "left"], [["Yes"], [" left"]]
    assert get_scorer("gqa").item_scores(predictions, references) == [0.0, 0.0]
    assert get_scorer("gqa", scoring="lenient").item_scores(predictions, references) == [1.0, 1.0]


def test_classification_counts_an_empty_output_as_the_original_does():
    # eval_ImagetNet: ("tabby cat" in "") or ("" in "tabby cat") -> True, in both modes (a bug fix, no switch)
    for name in ("classification", "classification_ci"):
        for scoring in SCORINGS:
            assert get_scorer(name, scoring=scoring).item_scores(["", "  "], [["tabby cat"], ["dog"]]) == [1.0, 1.0]


def test_classification_ci_lower_cases_as_smolora_does():
    # SMoLoRA's eval_ImagetNet lower-cases: "strasse" vs "straße", neither in the other -> 0
    # (upper-casing, the kit's old rule, made both "STRASSE" -> 1)
    scorer = get_scorer("classification_ci")
    assert scorer.item_scores(["STRASSE", "Golden RETRIEVER"], [["Straße"], ["golden retriever"]]) == [0.0, 1.0]


def test_score_outputs_passes_the_scoring_through():
    task = Task("grounding", 0, None, Path("test.json"), "grounding", 16, (), mif="box")
    records = [SimpleNamespace(uid="0", answers=tuple(REF))]
    texts = ["[0.75, 1.0, 0.25, 0.50]"]  # reversed corners (see above)
    assert score_outputs(task, records, texts, False, "cider").scores["score"] == 0.0
    assert score_outputs(task, records, texts, False, "cider", "lenient").scores["score"] == 100.0


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


def test_official_box_reads_as_coin_does():
    # brackets deleted, then the first and last characters dropped: ".25, 0.5, 0.75, 1." -> four floats
    assert official_box("[0.25, 0.5, 0.75, 1.0]") == (0.25, 0.5, 0.75, 1.0)
    assert official_box("[0.75, 1.0, 0.25, 0.50]") == (0.75, 1.0, 0.25, 0.5)  # corners kept as written
    assert official_box("[0.1, 0.2, 0.3, 0.45]") == (0.1, 0.2, 0.3, 0.4)  # the slip: last digit lost
    assert official_box("[0.1, 0.2, 0.3, 0.9]") == (0.1, 0.2, 0.3, 0.0)  # "0." reads 0.0
    assert official_box("(0.1, 0.2, 0.3, 0.4)") == (0.1, 0.2, 0.3, 0.4)  # "(" and ")" are the dropped ends
    assert official_box("[0.1, 0.2, 0.3, 0.4]", slip=False) == (0.1, 0.2, 0.3, 0.4)  # how references read
    for text in ("The box is [0.1, 0.2, 0.3, 0.4]", "[0.1 0.2 0.3 0.4]", "[0.1, 0.2, 0.3, 0.4, 0.5]", "[0.1, 0.2]",
                 ""):
        assert official_box(text) is None


def test_box_iou():
    # [0,0,2,2] and [1,1,3,3]: intersection 1x1 = 1, union 4 + 4 - 1 = 7
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # no area
    # corners reversed: width max(0, min(0, 2) - max(2, 0)) = 0, so no intersection whatever the union
    assert box_iou((2, 2, 0, 0), (0, 0, 2, 2)) == 0.0


REF = ["[0.25, 0.5, 0.75, 1.0]"]  # area 0.5 x 0.5 = 0.25


def test_reversed_corner_box_scores_zero_officially_and_one_leniently():
    # official reads (0.75, 1.0, 0.25, 0.5): width max(0, min(0.25, 0.75) - max(0.75, 0.25)) = 0 -> IoU 0;
    # lenient orders it to (0.25, 0.5, 0.75, 1.0) = the reference -> IoU 1
    reversed_box = ["[0.75, 1.0, 0.25, 0.50]"]  # the trailing 0 is what the official slip drops
    assert get_scorer("grounding").item_scores(reversed_box, [REF]) == [0.0]
    assert get_scorer("grounding", scoring="lenient").item_scores(reversed_box, [REF]) == [1.0]
    # only y reversed, (0.25, 1.0, 0.75, 0.5): height 0; union 0.5 * -0.5 + 0.25 - 0 = 0 -> IoU 0
    assert get_scorer("grounding").item_scores(["[0.25, 1.0, 0.75, 0.50]"], [REF]) == [0.0]


def test_grounding_official_and_lenient_readings():
    predictions = [
        "[0.25, 0.5, 0.75, 1.0]",  # both: ".25, 0.5, 0.75, 1." reads the reference -> 1
        "0.25, 0.5, 0.75, 1.0",  # both: the bare list reads the same -> 1
        "(0.25, 0.5, 0.75, 1.0)",  # both: official drops "(" and ")" -> 1
        # official y2 = 0.7: 0.5 * 0.2 / (0.1 + 0.25 - 0.1) = 0.4 -> 0; lenient 0.79: 0.145 / 0.25 = 0.58 -> 1
        "[0.25, 0.5, 0.75, 0.79]",
        "[0.25, 0.5, 0.75, 0.8]",  # official y2 = 0.0 < y1 -> IoU 0; lenient 0.15 / 0.25 = 0.6 -> 1
        "The box is [0.25, 0.5, 0.75, 1.0]",  # official: float("he box is 0.25") fails -> 0; lenient 1
        "[0.25 0.5 0.75 1.0]",  # official: no commas, one unreadable part -> 0; lenient 1
        "[0.25, 0.5, 0.75, 1.0, 0.9]",  # official: five numbers -> 0; lenient: the first four -> 1
        "[0.25, 0.5, 0.75, 0.750]",  # both: IoU = 0.125 / 0.25 = 0.5, not > 0.5 -> 0
        "no box here",
        "",
    ]
    official, lenient = get_scorer("grounding"), get_scorer("grounding", scoring="lenient")
    assert official.item_scores(predictions, [REF] * 11) == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert lenient.item_scores(predictions, [REF] * 11) == [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert official.score(predictions, [REF] * 11)["score"] == pytest.approx(300 / 11)
    for scorer in (official, lenient):
        with pytest.raises(ValueError, match="grounding reference"):
            scorer.score(["[0, 0, 1, 1]"], [["a cat"]])


def test_empty_and_unicode_outputs_score_zero_without_error():
    for name in ("vqa", "exact", "gqa", "ocr", "choice", "grounding"):
        for scoring in SCORINGS:
            scorer = get_scorer(name, scoring=scoring)
            reference = {"grounding": ["[0, 0, 1, 1]"], "choice": ["A"]}.get(name, ["yes"])
            assert scorer.score(["", "\u00e9\u65e5\u672c \U0001f600"], [reference, reference]) == {"score": 0.0}


def test_empty_prediction_never_matches_a_reference_that_normalises_to_nothing():
    assert normalize_answer("A") == ""  # the article is dropped
    assert get_scorer("vqa", relaxed=True).item_scores(["", "the"], [["A"], ["A"]]) == [0.0, 0.0]


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


def test_caption_keeps_empty_references_officially():
    # Two items, N = 2, each n-gram in one item's references: idf = log 2 - log 1 for all of them.
    # Item 1 "c d" vs ["c d"]: cosine 1 for 1- and 2-grams, 0 for 3-, 4-grams -> mean 0.5, x10 = 5.
    # Item 0 "a b" vs ["a b", "..."] ("..." tokenises to ""): sims [1, 1, 0, 0] + [0, 0, 0, 0];
    # official (COCOEvalCap keeps it): 0.5 / 2 refs x10 = 2.5; lenient drops it: 0.5 / 1 x10 = 5.
    # CIDEr x100: official 100 * (2.5 + 5) / 2 = 375, lenient 100 * (5 + 5) / 2 = 500
    predictions, references = ["a b", "c d"], [["a b", "..."], ["c d"]]
    assert get_scorer("caption").score(predictions, references)["cider"] == pytest.approx(375.0)
    assert get_scorer("caption", scoring="lenient").score(predictions, references)["cider"] == pytest.approx(500.0)


def test_caption_raw_cider_follows_smolora():
    # SMoLoRA's eval_textcaps_cider: CIDEr on whitespace-split text, so "A" != "a" and "dog." != "dog":
    # item 0 shares no n-gram -> 0; item 1 "c d" = its reference -> 5 (as above); 100 * (0 + 5) / 2 = 250.
    # PTB-tokenised (lowercased, "." dropped) item 0 matches too: 100 * (5 + 5) / 2 = 500 (lenient's score)
    predictions, references = ["A dog.", "c d"], [["a dog"], ["c d"]]
    official = get_scorer("caption", caption_metric="cider_raw").score(predictions, references)
    assert official["cider_raw"] == pytest.approx(250.0) and official["score"] == official["cider_raw"]
    assert official["cider"] == pytest.approx(500.0)
    lenient = get_scorer("caption", caption_metric="cider_raw", scoring="lenient").score(predictions, references)
    assert lenient["score"] == pytest.approx(500.0) and lenient["cider_raw"] == pytest.approx(250.0)


def test_caption_metrics_pinned_on_a_case_checked_by_hand():
    """'a b c' against the one reference 'a b d e' (COCOEvalCap's definitions):
    BLEU: clipped n-gram precisions 2/3 and 1/2, brevity penalty exp(1 - 4/3) (prediction shorter than the
    reference): BLEU-1 = 0.71653 * 2/3, BLEU-2 = 0.71653 * sqrt(2/3 * 1/2); no 3-gram matches: BLEU-3 ~ 0.
    ROUGE-L: LCS 2, P = 2/3, R = 2/4, F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 0.55708.
    METEOR 1.5 ('dog runs' against 'dog runs fast grass': exact matches, one chunk, content words): P 1, R 1/2,
    Fmean = P R / (0.85 P + 0.15 R) = 0.54054, penalty 0.6 (1 chunk / 2 matches)^0.2 = 0.52233,
    METEOR = (1 - 0.52233) * 0.54054 = 0.25820."""
    scorer = get_scorer("caption")
    scores = scorer.score(["a b c"], [["a b d e"]])
    brevity = math.exp(1 - 4 / 3)
    assert scores["bleu1"] == pytest.approx(100 * brevity * 2 / 3, abs=1e-3)
    assert scores["bleu2"] == pytest.approx(100 * brevity * math.sqrt(2 / 3 * 1 / 2), abs=1e-3)
    assert scores["bleu3"] == pytest.approx(0.0, abs=1e-2)
    assert scores["rouge_l"] == pytest.approx(100 * 2.44 * (2 / 3) * 0.5 / (0.5 + 1.44 * 2 / 3), abs=1e-3)
    fmean = 0.5 / (0.85 + 0.15 * 0.5)
    meteor = (1 - 0.6 * 0.5 ** 0.2) * fmean
    assert scorer.score(["dog runs"], [["dog runs fast grass"]])["meteor"] == pytest.approx(100 * meteor, abs=0.05)


def test_an_evaluation_judges_each_item_once():
    judged = []
    scorer = MeanScorer("counted", lambda prediction, references: judged.append(prediction) or float(prediction == "a"))
    scores, items = scorer.score_items(["a", "b"], [["a"], ["a"]])
    assert judged == ["a", "b"] and items == [1.0, 0.0] and scores == {"score": 50.0}


def test_caption_scoring_writes_nothing_inside_the_installed_package():
    # as from a read-only install (tests/writes.py; the Java tokenizer and METEOR only read their jars)
    from pycocoevalcap.tokenizer import ptbtokenizer

    with recorded_writes() as written:
        scores = get_scorer("caption").score(["a dog runs", "a cat"], [["a dog is running"], ["the cat sits"]])
    package = str(Path(ptbtokenizer.__file__).resolve().parents[1])  # a namespace package: no __init__
    assert scores["bleu1"] > 0 and written  # the tokenizer's temporary file was written (elsewhere)
    assert not [path for path in written if str(Path(path).resolve()).startswith(package)]


def test_the_tokenizer_matches_pycocoevalcaps():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from cvit.eval.ptb import ptb_tokenize

    captions = {("a", 0): [{"caption": "A Dog, running!"}, {"caption": "naïve café — 3.5 km"}],
                ("b", 1): [{"caption": ""}], ("c", 2): [{"caption": "It's \"quoted\" (x) -- ok..."}]}
    assert ptb_tokenize(captions) == PTBTokenizer().tokenize(captions)


def test_caption_scores_without_meteor_unless_the_number_is_the_mean(monkeypatch, caption_scores):
    import cvit.eval.captions as captions

    calls = []
    monkeypatch.setattr(captions, "_meteor", lambda: calls.append(1) or (_ for _ in ()).throw(AssertionError))
    identical = [refs[0] for refs in CAPTION_REFS]
    scores = get_scorer("caption", meteor=False).score(identical, CAPTION_REFS)
    assert set(scores) == {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider", "score"} and not calls
    assert scores["cider"] == pytest.approx(caption_scores["identical"]["cider"])
    with pytest.raises(AssertionError):  # the seven-metric mean needs METEOR: it is computed anyway
        get_scorer("caption", caption_metric="mean", meteor=False).score(identical, CAPTION_REFS)
    assert calls
