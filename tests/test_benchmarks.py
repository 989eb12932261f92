"""Benchmark specs, `cvit data check`, `cvit score` and MIF on fake data roots shaped like the releases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cvit.cli import main
from cvit.config.load import load_config
from cvit.config.validate import validate_benchmark
from cvit.data.stream import build_tasks
from cvit.eval.mif import following_verdicts, follows, mean_following
from tests.conftest import CONFIGS

SPECS = sorted((CONFIGS / "benchmark").glob("*.yaml"))  # absolute: the same cases from any working folder
COIN = CONFIGS / "benchmark" / "coin.yaml"


def test_every_shipped_spec_is_collected():
    assert {p.stem for p in SPECS} >= {"coin", "ucit", "cvit", "synthetic"}


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_every_spec_validates_in_every_order_and_template_variant(spec):
    cfg, sources = load_config([spec], sections=("benchmark",))
    validate_benchmark(cfg, sources)
    variants = {v for task in cfg.benchmark.tasks.values() for v in task.instructions} | {"as_is"}
    for order in [*cfg.benchmark.orders] or ["default"]:
        for variant in variants:
            cfg, sources = load_config([spec], [f"benchmark.order={order}", f"benchmark.templates={variant}"],
                                       sections=("benchmark",))
            stream, unseen = build_tasks(cfg.benchmark, sources)
            assert len({t.name for t in stream}) == len(stream) > 0


def test_published_orders_and_unseen_tasks():
    coin, _ = load_config([COIN], sections=("benchmark",))
    assert list(coin.benchmark.orders.alphabet) == [
        "gqa", "grounding", "imagenet", "ocrvqa", "scienceqa", "textvqa", "vizwiz", "vqav2"]
    cvit, sources = load_config([CONFIGS / "benchmark" / "cvit.yaml"], sections=("benchmark",))
    _, unseen = build_tasks(cvit.benchmark, sources)
    assert [t.name for t in unseen] == ["vizwiz", "textcaps", "ocrvqa", "places365"]
    assert {t.name: t.mif for t in unseen} == {
        "vizwiz": "short", "textcaps": "caption", "ocrvqa": "short", "places365": "short"}


def write_coin_root(root: Path, train: int = 3, test: int = 2) -> Path:
    """A CoIN-shaped root: every task folder with train/test JSON in the release's shapes (instruction in
    the text, grounding answers as `answer_bbox`) and small PNG images."""
    cfg, _ = load_config([COIN], sections=("benchmark",))
    (root / "images").mkdir(parents=True)
    for index, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (32, 32), colour).save(root / "images" / f"{index}.png")
    for name, spec in cfg.benchmark.tasks.items():
        origin = spec.instructions.origin[0]
        question = origin.replace("{question}", "the red square") if "{question}" in origin \
            else f"What colour is it?\n{origin}"
        answer = "[0.0, 0.0, 1.0, 1.0]" if spec.scorer == "grounding" else "A" if spec.scorer == "choice" else "red"
        records = [{"id": f"{name}-{i}", "image": f"images/{i % 3}.png",
                    "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                      {"from": "gpt", "value": answer}]} for i in range(train)]
        tests = [{"question_id": i, "image": f"images/{i % 3}.png", "text": question,
                  **({"answer_bbox": answer, "size": [32, 32]} if spec.scorer == "grounding" else {"answer": answer})}
                 for i in range(test)]
        for split, rows in (("train", records), ("test", tests)):
            path = root / spec[split]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows))
    return root


def test_data_check_passes_a_good_root_without_size_checks(tmp_path, capsys):
    root = write_coin_root(tmp_path / "coin")
    # a fake root is tiny: a tolerance of 1000x the published sizes lets every count pass
    assert main(["data", "check", "-c", str(COIN), f"data.root={root}", "benchmark.size_tolerance=1000"]) == 0
    out = capsys.readouterr().out
    assert "all 16 file(s) OK" in out and "scienceqa" in out


def test_data_check_lists_every_defect(tmp_path, capsys):
    root = write_coin_root(tmp_path / "coin")
    (root / "images" / "1.png").unlink()  # missing image: records 1 of every file
    (root / "images" / "2.png").write_bytes(b"not a png")  # corrupt image: records 2 of train files
    rows = json.loads((root / "GQA/train.json").read_text())
    del rows[0]["conversations"]
    (root / "GQA/train.json").write_text(json.dumps(rows))  # malformed record
    (root / "VizWiz/test.json").write_text("[{")  # malformed JSON
    assert main(["data", "check", "-c", str(COIN), f"data.root={root}"]) == 2
    out = capsys.readouterr().out
    assert "ScienceQA/train.json: 3 records, the published size is 12000 (tolerance 5%)" in out
    assert "GQA/train.json: record 0 (id gqa-0): missing field 'conversations'" in out
    assert "image not found" in out and f"unreadable image {root / 'images' / '2.png'}" in out
    assert "VizWiz/test.json:1:3: malformed JSON" in out or "VizWiz/test.json:1:2: malformed JSON" in out
    assert "GQA/test.json: record 1 (id 1): image not found" in out


def test_score_command_prints_score_and_mif(tmp_path, capsys):
    root = write_coin_root(tmp_path / "coin")
    predictions = tmp_path / "pred.jsonl"
    predictions.write_text('{"question_id": 0, "text": "Red"}\n{"question_id": 1, "text": "a red square."}\n')
    assert main(["score", "-c", str(COIN), "--task", "vizwiz", str(predictions), f"data.root={root}"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["score"] == 50.0 and result["mif"] == 50.0 and result["scorer"] == "exact"
    predictions.write_text('{"question_id": 0, "text": "red"}\n')
    assert main(["score", "-c", str(COIN), "--task", "vizwiz", str(predictions), f"data.root={root}"]) == 2
    assert "1 question_id(s) missing ['1']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("rule", "output", "references", "expected"),
    [
        ("letter", " b ", ["A"], True), ("letter", "A.", ["A"], False), ("letter", "The answer is A", ["A"], False),
        ("short", "golden retriever", ["dog"], True), ("short", "a big red bus", ["dog"], False),
        ("short", "The Big Red Bus", ["the big red bus"], True), ("short", "", ["dog"], True),
        ("caption", "A dog runs fast.", ["x"], False), ("caption", "A dog runs on the grass.", ["x"], True),
        ("caption", "a dog.", ["A dog. runs"], True), ("caption", "A dog runs on the grass", ["x"], False),
        ("box", "[0.1, 0.2, 0.3, 0.4]", ["x"], True), ("box", "0.1,0.2,0.3,0.4", ["x"], True),
        ("box", "The box is [0.1, 0.2, 0.3, 0.4]", ["x"], False), ("box", "[10, 20, 30, 40]", ["x"], False),
    ],
)
def test_mif_rules(rule, output, references, expected):
    assert follows(rule, output, references) is expected


def test_mif_rates_and_mean():
    assert following_verdicts("letter", ["A", "B.", "C", "no"], [["A"]] * 4) == [True, False, True, False]
    assert following_verdicts("none", ["A"], [["A"]]) is None
    assert mean_following([50.0, 100.0, None]) == 75.0
    assert mean_following([None]) is None


def test_continual_run_on_a_coin_shaped_root_reports_mif_and_protocol(tmp_path, tiny_model_dir):
    from cvit.run.loop import ContinualRun

    root = write_coin_root(tmp_path / "coin", train=4, test=3)
    cfg, sources = load_config(
        [COIN, "configs/method/seqlora.yaml"],
        [f"data.root={root}", f"model.path={tiny_model_dir}", f"run.root={tmp_path / 'runs'}",
         "benchmark.order=[scienceqa,grounding]", "train.max_steps=1", "data.batch_size=2", "data.eval_batch_size=3",
         "benchmark.tasks.grounding.max_new_tokens=4", "benchmark.protocol.bwt_denominator=T"],
    )
    run_dir = ContinualRun(cfg, sources).run()
    doc = json.loads((run_dir / "matrix.json").read_text())
    assert len(doc["matrix"]) == len(doc["mif"]) == 2 and len(doc["mif"][1]) == 2
    assert all(0 <= rate <= 100 for row in doc["mif"] for rate in row)
    assert doc["protocol"]["bwt_denominator"] == "T"
    report = (run_dir / "report.md").read_text()
    assert "## Instruction following (MIF)" in report and "BWT divides by: T" in report


def test_grounding_answer_bbox_forms(tmp_path):
    from cvit.data.records import record_answers
    from cvit.errors import DataError

    assert record_answers({"answer_bbox": [0.1, 0.2, 0.3, 0.4]}, "f: record 0", "0") == ("[0.1, 0.2, 0.3, 0.4]",)
    assert record_answers({"answers": [{"answer": "yes"}, {"answer": "no"}]}, "f: record 0", "0") == ("yes", "no")
    with pytest.raises(DataError, match="must hold four numbers normalised"):
        record_answers({"answer_bbox": [10, 20, 30, 40], "size": [64, 64]}, "f: record 0", "0")


def test_the_long_stream_extends_the_default_with_the_same_records(synthetic_root, tiny_model_dir, tmp_path):
    from cvit.run.loop import ContinualRun
    from cvit.synthetic.tasks import LONG_TASKS
    from cvit.synthetic.writer import SyntheticSizes, is_current, make_synthetic

    sizes = SyntheticSizes(train=48, test=8, base=64)  # the session benchmark's sizes
    long_root = make_synthetic(tmp_path / "long", sizes, LONG_TASKS)
    assert is_current(long_root, sizes, LONG_TASKS) and not is_current(long_root, sizes)
    for task in ("colour_mc", "grounding"):  # a shared task's records do not depend on the stream
        assert (long_root / task / "train.json").read_text() == (synthetic_root / task / "train.json").read_text()
    cfg, sources = load_config(
        [CONFIGS / "model" / "tiny_llava.yaml", CONFIGS / "benchmark" / "synthetic_long.yaml",
         CONFIGS / "method" / "seqlora.yaml"], [f"benchmark.root={long_root}", f"model.path={tiny_model_dir}"])
    run = ContinualRun(cfg, sources)
    run.prepare()
    assert len(run.stream) == 12 and [t.name for t in run.stream[:6]] == list(
        load_config([CONFIGS / "benchmark" / "synthetic.yaml"], sections=("benchmark",))[0].benchmark.orders.default)
    answers = {t: {r.answers[0] for r in run.datamodule.test_records[t]} for t in ("side_mc", "digit_mc", "count_mc")}
    assert answers["side_mc"] <= {"A", "B"} and answers["digit_mc"] <= {"A", "B", "C", "D"}
