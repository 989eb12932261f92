"""The embedded world: its committed base model, its version in every run, the check across CPU settings, the
seed list of `cvit results`."""

from __future__ import annotations

import json
import shutil

import pytest

from cvit.errors import ConfigError, DataError, RunDirError
from cvit.run.loop import ContinualRun
from cvit.run.results import check_seeds
from cvit.run.world import COMMITTED, RECORD, WEIGHTS, base_is_current, materialise_base, prepare_world
from cvit.run.world_check import comparison
from cvit.synthetic.version import WORLD_VERSION
from tests.conftest import run_cli
from tests.test_loop import SHORT


def test_the_committed_base_is_of_this_world_and_makes_a_model_folder(tmp_path):
    folder = materialise_base(tmp_path / "base")
    assert base_is_current(folder)
    record = json.loads((folder / RECORD).read_text())
    assert record["world"] == WORLD_VERSION
    from transformers import LlavaForConditionalGeneration

    from cvit.model.tiny import build_word_tokenizer

    model = LlavaForConditionalGeneration.from_pretrained(folder)
    assert model.config.text_config.vocab_size == len(build_word_tokenizer())


@pytest.mark.parametrize(("change", "message"), [
    ({"world": WORLD_VERSION - 1}, f"key 'world': base built for world {WORLD_VERSION - 1}"),
    ({"vocabulary_sha256": "0" * 64}, "key 'vocabulary_sha256'"),
    ({"weights_sha256": "0" * 64}, "checksum differs"),
])
def test_a_base_of_another_world_or_with_damaged_weights_is_refused(tmp_path, change, message):
    committed = tmp_path / "committed"
    shutil.copytree(COMMITTED, committed)
    record = json.loads((committed / RECORD).read_text())
    (committed / RECORD).write_text(json.dumps({**record, **change}))
    with pytest.raises(DataError, match=message):
        materialise_base(tmp_path / "base", committed)
    assert not (tmp_path / "base").exists()


def test_prepare_world_rewrites_a_base_folder_of_another_world(tmp_path, monkeypatch):
    import cvit.run.world as world

    monkeypatch.setattr(world, "is_current", lambda data, sizes: True)  # the benchmark is not this test's concern
    base = materialise_base(tmp_path / "tiny-llava-base")
    record = json.loads((base / RECORD).read_text())
    (base / RECORD).write_text(json.dumps({**record, "world": 1}))
    assert not base_is_current(base)
    prepare_world(tmp_path)
    assert base_is_current(base) and (base / WEIGHTS).is_file()


def test_a_run_records_its_world_and_is_refused_at_resume_on_another(small_config):
    cfg, sources = small_config(*SHORT, "run.name=world", "train.max_steps=1", "benchmark.order=[colour_mc]")
    run_dir = ContinualRun(cfg, sources).run()
    document = json.loads((run_dir / "matrix.json").read_text())
    assert document["setup"]["world"] == {"benchmark": WORLD_VERSION}  # the test model is not the committed base
    document["setup"]["world"] = {"benchmark": WORLD_VERSION - 1}
    (run_dir / "matrix.json").write_text(json.dumps(document))
    with pytest.raises(RunDirError, match="another embedded world"):
        ContinualRun(cfg, sources, run_dir).run(resume=True)


def summary(zeroshot, matrix, files="a", base="b", capability="AVX2", threads=1):
    return {"capability": capability, "threads": threads, "benchmark_sha256": files, "base_sha256": base,
            "tasks": ["t1", "t2"], "zeroshot": zeroshot, "seqlora": matrix}


def test_world_check_compares_every_setting_with_the_first():
    same = [summary([10.0, 20.0], [[50.0], [40.0, 60.0]]), summary([11.5, 20.0], [[50.0], [42.5, 60.0]], threads=2)]
    text, holds = comparison(same)
    assert holds and "largest zero-shot difference: 1.50" in text and "every SeqLoRA cell: 2.50" in text
    off = same + [summary([10.0, 23.0], [[50.0], [40.0, 60.0]], capability="DEFAULT")]
    assert comparison(off)[1] is False  # zero-shot 3 points away
    assert comparison(same + [summary([10.0, 20.0], [[46.0], [40.0, 60.0]])])[1] is False  # a cell 4 away
    files = comparison(same + [summary([10.0, 20.0], [[50.0], [40.0, 60.0]], files="c")])
    assert files[1] is False and "benchmark files identical in every setting: NO" in files[0]


def test_world_check_builds_each_setting_from_nothing(tmp_path, monkeypatch):
    import cvit.run.world_check as world_check

    setting = tmp_path / "native-1"
    (setting / "runs" / "demo-zeroshot").mkdir(parents=True)  # a run of an earlier world, refused at resume

    def fake_child(command, env, stdout, stderr, check):
        assert not (setting / "runs").exists()
        (setting / "check.json").write_text('{"threads": 1}')

    monkeypatch.setattr(world_check.subprocess, "run", fake_child)
    assert world_check.run_setting(setting, tmp_path, "native", 1) == {"threads": 1}


@pytest.mark.parametrize("seeds", [(), ("1",), (0, 0), (True,)])
def test_a_bad_seed_list_is_refused(seeds):
    with pytest.raises(ConfigError, match="seed"):
        check_seeds(seeds)


def test_the_results_command_names_a_bad_seed_list(tmp_path, capsys):
    code, _, err = run_cli(capsys, "results", "--work", tmp_path, "--seeds")
    assert code == 2 and "the seed list is empty" in err
    code, _, err = run_cli(capsys, "results", "--seeds", "0", "one")
    assert code == 2 and "invalid int value: 'one'" in err
    assert not (tmp_path / "synthetic").exists()  # refused before anything was written


def test_world_build_pretrains_perception_then_trains_the_rest_in_two_stages(tmp_path):
    from safetensors.torch import load_file

    from cvit.model.tiny import save_tiny_llava
    from cvit.run.vision_pretrain import PerceptionTraining
    from cvit.run.world import BaseTraining, build_base, file_sha256
    from cvit.synthetic.writer import SyntheticSizes

    committed = tmp_path / "committed"
    build_base(tmp_path / "work", BaseTraining(align_steps=2, steps=2, batch_size=4), committed,
               SyntheticSizes(train=4, test=2, base=16), PerceptionTraining(steps=2, batch_size=4))
    record = json.loads((committed / RECORD).read_text())
    assert record["weights_sha256"] == file_sha256(committed / WEIGHTS)
    assert record["training"]["align_steps"] == 2 and record["built_with"]["command"] == "make world"
    assert record["perception"]["steps"] == 2 and 0 <= record["perception_held_out"]["shape"] <= 1
    data = tmp_path / "work" / "synthetic" / "base"
    assert (data / "align.json").is_file() and (data / "train.json").is_file()
    folder = materialise_base(tmp_path / "base", committed)
    trained, perceiving = load_file(folder / WEIGHTS), load_file(tmp_path / "work" / "tiny-llava" / WEIGHTS)
    fresh = load_file(save_tiny_llava(tmp_path / "fresh", seed=0) / WEIGHTS)
    tower = [key for key in trained if key.startswith("vision_tower.")]  # the saved files' key layout
    rest = [key for key in trained if not key.startswith("vision_tower.")]
    assert tower and rest and trained.keys() == perceiving.keys() == fresh.keys()
    assert any(not (perceiving[k] == fresh[k]).all() for k in tower)  # perception pretraining moved the tower
    assert all((trained[k] == perceiving[k]).all() for k in tower)  # base training kept it frozen
    assert any(not (trained[k] == perceiving[k]).all() for k in rest)  # and trained the projector and LLM


def test_the_committed_base_sees_colour_and_kind(tmp_path):
    from cvit.run.probe import probe_base

    shares = probe_base(materialise_base(tmp_path / "base"))
    assert set(shares) == {"colour_clear", "kind_clear", "colour_hard", "kind_hard", "box_hard", "where_hard",
                           "where_other_hard"}
    assert shares["colour_clear"] > 0.9 and shares["kind_clear"] > 0.9  # world 2's base named the kind at chance
    assert 0 <= shares["box_hard"] <= 1
    assert shares["where_hard"] + shares["where_other_hard"] > 0.9  # it names an occupied place (the two differ)
