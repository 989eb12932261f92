from __future__ import annotations

import json
import shutil

import pytest

from cvit.data.records import load_test, load_train
from cvit.errors import ConfigError, DataError
from cvit.loop import ContinualRun


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
