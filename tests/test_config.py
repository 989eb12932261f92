from __future__ import annotations

import pytest

from cvit.config import load_config
from cvit.errors import ConfigError
from cvit.loop import ContinualRun
from tests.conftest import CONFIGS


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_files_merge_in_order_and_overrides_win(tmp_path):
    a = write(tmp_path, "a.yaml", "train: {lr: 0.1, epochs: 2}\ncallbacks:\n  x: {name: replay}\n")
    b = write(tmp_path, "b.yaml", "train: {lr: 0.2}\ncallbacks:\n  x: {samples_per_task: 3}\n")
    cfg, sources = load_config([a, b], ["train.epochs=5", "model.path=/m", "benchmark.name=n", "benchmark.root=r"])
    assert cfg.train.lr == 0.2 and cfg.train.epochs == 5
    assert dict(cfg.callbacks.x) == {"name": "replay", "samples_per_task": 3}
    assert sources.of("train.lr") == str(b) and sources.of("train.epochs") == "the command line"


def test_include_is_relative_to_the_including_file(tmp_path):
    write(tmp_path, "base.yaml", "train: {lr: 0.5}\n")
    child = write(tmp_path, "child.yaml", "include: [base.yaml]\ntrain: {epochs: 3}\n")
    cfg, _ = load_config([child], ["model.path=/m", "benchmark.name=n", "benchmark.root=r"])
    assert cfg.train.lr == 0.5 and cfg.train.epochs == 3


def test_null_drops_a_callback(tmp_path):
    a = write(tmp_path, "a.yaml", "callbacks:\n  x: {name: replay}\n  y: {name: replay}\n")
    cfg, _ = load_config([a], ["callbacks.y=null", "model.path=/m", "benchmark.name=n", "benchmark.root=r"])
    assert list(cfg.callbacks) == ["x"]


def test_unknown_key_names_key_and_file(tmp_path):
    bad = write(tmp_path, "bad.yaml", "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: key 'train\.lrr'"):
        load_config([bad])


def test_wrong_type_names_key_and_file(tmp_path):
    bad = write(tmp_path, "bad.yaml", "train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: key 'train\.epochs'"):
        load_config([bad])


def test_wrong_type_on_command_line():
    with pytest.raises(ConfigError, match=r"command line: key 'data\.batch_size'"):
        load_config([], ["data.batch_size=big"])


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = write(tmp_path, "bad.yaml", "train:\n  lr: [1, 2\nmodel: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config([bad])


def test_missing_required_keys_are_listed():
    with pytest.raises(ConfigError, match="model.path"):
        load_config([])


def test_unknown_order_and_task(small_config):
    cfg, sources = small_config("benchmark.order=sideways")
    with pytest.raises(ConfigError, match=r"unknown order 'sideways'"):
        ContinualRun(cfg, sources).prepare()
    cfg, sources = small_config("benchmark.order=[colour_mc,nope]")
    with pytest.raises(ConfigError, match=r"command line: key 'benchmark.order': unknown task 'nope'"):
        ContinualRun(cfg, sources).prepare()


def test_explicit_order_list(small_config):
    cfg, sources = small_config("benchmark.order=[grounding,colour_mc]")
    run = ContinualRun(cfg, sources)
    run.prepare()
    assert [t.name for t in run.stream] == ["grounding", "colour_mc"]


def test_unknown_callback_name_and_argument(small_config, tmp_path):
    bad = write(tmp_path, "m.yaml", "callbacks:\n  r: {name: no_such_thing}\n")
    cfg, sources = small_config(files=[bad])
    with pytest.raises(ConfigError, match=r"m\.yaml: key 'callbacks.r.name': unknown callback 'no_such_thing'"):
        ContinualRun(cfg, sources).prepare()
    bad = write(tmp_path, "m2.yaml", "callbacks:\n  r: {name: replay, sampels_per_task: 3}\n")
    cfg, sources = small_config(files=[bad])
    with pytest.raises(ConfigError, match=r"m2\.yaml: key 'callbacks.r.sampels_per_task': unknown argument"):
        ContinualRun(cfg, sources).prepare()


def test_unknown_scorer_and_template_variant(small_config):
    cfg, sources = small_config("benchmark.tasks.colour_mc.scorer=magic")
    with pytest.raises(ConfigError, match=r"benchmark.tasks.colour_mc.scorer"):
        ContinualRun(cfg, sources).prepare()
    cfg, sources = small_config("benchmark.templates=fancy")
    with pytest.raises(ConfigError, match=r"no 'fancy' templates"):
        ContinualRun(cfg, sources).prepare()


def test_every_shipped_config_validates(small_config):
    """Each method / experiment YAML composes with the tiny-model overrides and passes `prepare`."""
    for path in sorted((CONFIGS / "method").glob("*.yaml")) + sorted((CONFIGS / "experiment").glob("*.yaml")):
        cfg, sources = small_config(files=[path])
        ContinualRun(cfg, sources).prepare()
    for path in sorted((CONFIGS / "model").glob("*.yaml")):
        cfg, sources = small_config(files=[path])
        assert cfg.model.family in ("llava", "qwen2_vl"), path
