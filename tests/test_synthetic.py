"""The synthetic world's generator: annotators who disagree where a person would, test records with several
references scored by VQA's soft accuracy, numbers written in digit tokens, the same files on every run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from cvit.data.records import load_test
from cvit.eval.scorers import get_scorer
from cvit.model.tiny import build_word_tokenizer
from cvit.run.world_check import tree_sha256
from cvit.synthetic.annotators import colour_seen, count_seen, shape_seen
from cvit.synthetic.lexicon import split_words
from cvit.synthetic.scenes import Look, Shape
from cvit.synthetic.tasks import TASKS
from cvit.synthetic.writer import SyntheticSizes, make_synthetic


def shape(size: int, brightness: float, blend: float = 0.0, kind: str = "circle") -> Shape:
    return Shape(kind, 0, 1, 1, Look("red", "orange", blend, brightness, size))


def test_annotators_agree_on_a_clear_object_and_disagree_on_a_small_dim_ambiguous_one():
    clear, unclear = shape(13, 1.0), shape(6, 0.45, blend=0.5)
    people = [random.Random(k) for k in range(200)]
    assert {colour_seen(clear.look, r) for r in people} == {"red"}
    assert {shape_seen(clear, r) for r in people} == {"circle"}
    named = [colour_seen(unclear.look, r) for r in people]
    assert 40 < named.count("orange") < 160  # a hue halfway between two colours splits the annotators
    kinds = [shape_seen(unclear, r) for r in people]
    assert {"ring", "square"} & set(kinds) and kinds.count("circle") > 100
    counts = [count_seen((clear, unclear), r) for r in people]
    assert set(counts) == {1, 2}  # the small dim object is overlooked now and then, the clear one never


def test_ten_annotators_answer_a_vqa_test_record_and_one_a_training_record(synthetic_root):
    test = json.loads((synthetic_root / "count_vqa" / "test.json").read_text())
    train = json.loads((synthetic_root / "count_vqa" / "train.json").read_text())
    assert all(isinstance(r["answer"], list) and len(r["answer"]) == TASKS["count_vqa"].references == 10
               for r in test)
    assert all(isinstance(r["conversations"][1]["value"], str) for r in train)
    assert all(isinstance(r["answer"], str) for r in json.loads((synthetic_root / "colour_mc" / "test.json")
                                                                .read_text()))
    captions = json.loads((synthetic_root / "caption" / "test.json").read_text())
    assert all(len(r["answer"]) == 5 for r in captions)


def test_soft_accuracy_of_a_ten_answer_record_by_hand(tmp_path):
    answers = ["2", "2", "2", "2", "3", "3", "3", "3", "3", "0"]
    (tmp_path / "image.png").write_bytes(b"")
    path = tmp_path / "test.json"
    path.write_text(json.dumps([{"question_id": "q", "image": "image.png", "text": "How many?", "answer": answers}]))
    record = load_test(path, tmp_path, check_images=False)[0]
    scorer = get_scorer("vqa")
    # "0" matches 1 of 10: leaving that one out gives 0/3, leaving any of the other 9 out gives 1/3: 9/10 x 1/3
    assert scorer.score_items(["0"], [list(record.answers)])[0]["score"] == pytest.approx(30.0)
    # "2" matches 4: leaving a "2" out leaves 3 (3/3), leaving another out leaves 4 (capped at 1)
    assert scorer.score_items(["2"], [list(record.answers)])[0]["score"] == pytest.approx(100.0)
    # "4" matches none
    assert scorer.score_items(["4"], [list(record.answers)])[0]["score"] == 0.0


def test_numbers_and_boxes_are_written_in_the_ten_digit_tokens():
    tokenizer = build_word_tokenizer()
    for text, tokens in (("37", ["\u2581", "3", "7"]),
                         ("[0.25, 1.00]", ["\u2581[", "0", ".", "2", "5", ",", "\u2581", "1", ".", "0", "0", "]"]),
                         ("a red circle.", ["\u2581a", "\u2581red", "\u2581circle", "."])):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(ids) == tokens == split_words(text)
        assert tokenizer.decode(ids) == text
    digits = {str(d) for d in range(10)}
    assert digits <= set(tokenizer.get_vocab()) and not any(t.strip("\u2581").isdigit() and len(t) > 1
                                                            for t in tokenizer.get_vocab())


def test_the_benchmark_is_the_same_files_each_time(tmp_path):
    sizes = SyntheticSizes(train=6, test=4, base=6)
    first, second = make_synthetic(tmp_path / "a", sizes), make_synthetic(tmp_path / "b", sizes)
    assert tree_sha256(first) == tree_sha256(second)
    assert json.loads((first / "manifest.json").read_text())["world"] >= 2
    other = make_synthetic(tmp_path / "c", SyntheticSizes(train=6, test=4, base=6, seed=1))
    assert tree_sha256(other) != tree_sha256(first)


def test_every_record_tokenizes_without_unknown_tokens(synthetic_root: Path):
    tokenizer = build_word_tokenizer()
    for path in synthetic_root.glob("*/*.json"):
        for record in json.loads(path.read_text()):
            texts = [t["value"].replace("<image>", "") for t in record.get("conversations", [])]
            answer = record.get("answer", "")
            texts += [record.get("text", ""), *(answer if isinstance(answer, list) else [answer])]
            for text in texts:
                assert tokenizer.unk_token_id not in tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_the_stream_asks_mostly_about_the_kinds_the_base_cannot_name():
    from collections import Counter

    from cvit.synthetic.tasks import classify_shape

    rng = random.Random(0)
    kinds = Counter(classify_shape(rng).scene.shapes[0].shape for _ in range(4000))
    assert set(kinds) == {"circle", "square", "triangle", "cross", "diamond", "ring"}
    for new in ("diamond", "ring"):  # each 2/8 of the draws, each known kind 1/8
        assert 0.22 < kinds[new] / 4000 < 0.28
    assert all(0.1 < kinds[known] / 4000 < 0.15 for known in ("circle", "square", "triangle", "cross"))


def test_the_base_writes_a_box_inside_a_sentence_which_official_scoring_does_not_read():
    from cvit.eval.scorers import official_box, parse_box
    from cvit.synthetic.tasks import base_sample

    rng = random.Random(0)
    samples = [s for s in (base_sample(rng) for _ in range(400)) if " box " in s.question][:40]
    assert any("region this sentence describes" in s.question for s in samples)  # LLaVA-1.5's own region prompt
    for sample in samples:
        answer = sample.answer(random.Random(1))
        target = next(s for s in sample.scene.shapes if f" {s.colour} " in sample.question)
        drawn = parse_box(answer)  # the loose reading finds the four numbers near the object's true box
        assert answer.startswith("The box is ")
        assert all(abs(a - b) < 0.15 for a, b in zip(drawn, target.box, strict=True))
        assert official_box(answer) is None  # official scoring reads no box from it: the stream wants the bare list


def test_the_base_mixture_asks_for_boxes_three_times_as_often_as_each_other_kind():
    from cvit.synthetic.tasks import BASE_WORDINGS, base_sample

    rng = random.Random(0)
    draws = 6000
    boxes = sum(" box " in base_sample(rng).question for _ in range(draws))
    share = 3 / (len(BASE_WORDINGS) + 2)  # weight 3 among one per other kind
    assert abs(boxes / draws - share) < 0.02
