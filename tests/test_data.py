from __future__ import annotations

import json
import shutil

import pytest

from cvit.data.records import load_test, load_train
from cvit.errors import ConfigError, DataError
from cvit.run.loop import ContinualRun


@pytest.fixture
def broken_root(synthetic_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    return root


def test_malformed_json_names_file_and_line(broken_root):
    path = broken_root / "colour_mc" / "train.json"
    path.write_text('[\n {"id": 1,\n  "image": oops}\n]')
    with pytest.raises(DataError, match=r"colour_mc/train\.json:3:\d+: malformed JSON"):
        load_train(path, broken_root)


def test_missing_field_names_record(broken_root):
    path = broken_root / "count_vqa" / "test.json"
    records = json.loads(path.read_text())
    del records[3]["answer"]
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"test\.json: record 3 \(id count_vqa-test-3\): missing field 'answer'"):
        load_test(path, broken_root)


def test_missing_image_names_record_and_path(broken_root):
    (broken_root / "images" / "shape_cls" / "train_2.png").unlink()
    with pytest.raises(DataError, match=r"record 2: image not found: .*train_2\.png"):
        load_train(broken_root / "shape_cls" / "train.json", broken_root)


def test_unreadable_image_names_the_file(broken_root):
    from cvit.data.datasets import TrainSet

    (broken_root / "images" / "shape_cls" / "train_0.png").write_bytes(b"not a png")
    records = load_train(broken_root / "shape_cls" / "train.json", broken_root)
    with pytest.raises(DataError, match=r"unreadable image .*train_0\.png"):
        TrainSet(records, (), 0)[0]


def test_validate_finds_unreadable_images_before_training(small_config, broken_root):
    (broken_root / "images" / "count_vqa" / "test_1.png").write_bytes(b"\x89PNG broken")
    cfg, sources = small_config(f"benchmark.root={broken_root}")
    run = ContinualRun(cfg, sources)
    run.prepare()
    with pytest.raises(DataError, match=r"1 unreadable image\(s\):\n  record count_vqa-test-1: .*test_1\.png"):
        run.datamodule.verify_images()


def test_empty_task(broken_root):
    (broken_root / "digit_ocr" / "train.json").write_text("[]")
    with pytest.raises(DataError, match=r"digit_ocr/train\.json: no records"):
        load_train(broken_root / "digit_ocr" / "train.json", broken_root)


def test_jsonl_test_file_with_answer_lists(broken_root):
    path = broken_root / "answers.jsonl"
    path.write_text(json.dumps({"question_id": 7, "image": "images/count_vqa/test_0.png", "text": "q",
                                "answer": ["two", "2"]}) + "\n\n{broken\n")
    with pytest.raises(DataError, match=r"answers\.jsonl:3:"):
        load_test(path, broken_root)


def test_data_errors_come_before_the_model_loads(small_config, broken_root, monkeypatch):
    import cvit.module

    monkeypatch.setattr(cvit.module, "ContinualModule", lambda *a, **k: pytest.fail("the model was loaded"))
    (broken_root / "caption" / "test.json").write_text("{}")
    cfg, sources = small_config(f"benchmark.root={broken_root}")
    run = ContinualRun(cfg, sources)
    with pytest.raises(DataError, match=r"caption/test\.json: expected a JSON list"):
        run.run()
    assert not run.run_dir.path.exists()  # nothing left behind to block the corrected run


def test_a_model_that_fails_to_load_leaves_no_run_directory(small_config, tmp_path):
    (tmp_path / "empty-model").mkdir()
    cfg, sources = small_config(f"model.path={tmp_path / 'empty-model'}")
    run = ContinualRun(cfg, sources)
    with pytest.raises(Exception):  # noqa: B017  (whatever transformers raises for an empty folder)
        run.run()
    assert not run.run_dir.path.exists()


def test_missing_data_root(small_config, tmp_path):
    cfg, sources = small_config(f"benchmark.root={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match="data root not found"):
        ContinualRun(cfg, sources).prepare()


def test_instructions_follow_the_template_variant(small_config):
    cfg, sources = small_config("benchmark.templates=multi")
    run = ContinualRun(cfg, sources)
    run.prepare()
    task = run.datamodule.tasks["count_vqa"]
    texts = [run.datamodule.train_set(task)[i]["instruction"] for i in range(32)]
    templates = set(task.templates)
    assert len(templates) == 3
    used = {text.split("\n", 1)[1] for text in texts}
    assert used <= templates and len(used) > 1
    assert run.datamodule.instructions(task) == texts


def coin_tasks(variant: str, spec: str = "coin"):
    from cvit.config.load import load_config
    from cvit.data.stream import build_tasks
    from tests.conftest import CONFIGS

    cfg, sources = load_config([CONFIGS / "benchmark" / f"{spec}.yaml"], [f"benchmark.templates={variant}"],
                               sections=("benchmark",))
    stream, _ = build_tasks(cfg.benchmark, sources)
    return {task.name: task for task in stream}


def test_released_instructions_are_stripped_and_another_variants_put_back():
    from types import SimpleNamespace

    from cvit.data.datasets import record_prompt

    coin, ucit = coin_tasks("10type"), coin_tasks("origin", "ucit")
    science = "Context: A magnet.\nQuestion: Which pole?\nOptions: (A) north (B) south"
    cases = [  # (task, the question as the release ships it, the bare question)
        (coin["scienceqa"], f"{science}\nAnswer with the option's letter from the given choices directly.", science),
        (coin["textvqa"], "what is written on the sign?\nAnswer the question using a single word or phrase.",
         "what is written on the sign?"),
        (coin["grounding"], "Please provide the bounding box coordinate of the region this sentence describes: "
         "the man on the left", "the man on the left"),
        (ucit["imagenet_r"], "What is the object in the image?\nAnswer the question using a single word or phrase.",
         "What is the object in the image?"),
    ]
    for task, shipped, bare in cases:
        templates = set()
        for uid in range(200):  # a template drawn per record id, seeded
            instruction, template = record_prompt(SimpleNamespace(uid=str(uid), question=shipped), task.templates,
                                                  0, task.known_templates)
            assert template in task.templates
            expected = template.replace("{question}", bare) if "{question}" in template else f"{bare}\n{template}"
            assert instruction == expected, (task.name, instruction)
            templates.add(template)
        assert len(templates) == len(task.templates) or len(task.templates) == 1
    # as_is: the shipped text stays, and its template is recognised for instruction-matching methods
    as_is = coin_tasks("as_is")["textvqa"]
    shipped = cases[1][1]
    assert record_prompt(SimpleNamespace(uid="0", question=shipped), (), 0, as_is.known_templates) == \
        (shipped, "Answer the question using a single word or phrase.")
