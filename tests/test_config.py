from __future__ import annotations

import pytest
from cvit.callbacks.base import ContinualCallback

from cvit.config.load import load_config
from cvit.config.validate import validate_config
from cvit.errors import ConfigError
from cvit.run.loop import ContinualRun
from tests.conftest import CONFIGS


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_files_merge_in_order_and_overrides_win(tmp_path):
    a = write(tmp_path, "a.yaml", "train: {lr: 0.1, epochs: 2}\ncallbacks:\n  x: {name: replay}\n")
    b = write(tmp_path, "b.yaml", "train: {lr: 0.2}\ncallbacks:\n  x: {size: 3}\n")
    cfg, sources = load_config([a, b], ["train.epochs=5", "model.path=/m", "benchmark.name=n", "benchmark.root=r"])
    assert cfg.train.lr == 0.2 and cfg.train.epochs == 5
    assert dict(cfg.callbacks.x) == {"name": "replay", "size": 3}
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


@pytest.mark.parametrize(("overrides", "method_yaml", "match"), [
    (["benchmark.order=sideways"], None, r"unknown order 'sideways'; known: default, reverse \(or"),
    ([], "callbacks:\n  e: {name: dynamic_ema, granularity: block}\n",
     r"m\.yaml: key 'callbacks.e.granularity': granularity must be one of layer, tensor, got 'block'"),
    ([], "callbacks:\n  p: {name: progressive_pool, allocation: dynamic}\n  r: {name: task_recall, mode: kl, "
         "reduction: average}\n",
     r"m\.yaml: key 'callbacks.r.reduction': reduction must be one of sum, mean, got 'average'"),
    ([], "callbacks:\n  g: {name: instruction_grouping, similarity: median}\n",
     r"m\.yaml: key 'callbacks.g.similarity': similarity must be one of max, mean, got 'median'"),
    ([], "callbacks:\n  h: {name: hide, layout: expand_some}\n",
     r"m\.yaml: key 'callbacks.h.layout': layout must be one of"),
    ([], "callbacks:\n  p: {name: progressive_pool, allocation: dynamic, allocator: shared}\n",
     r"m\.yaml: key 'callbacks.p.allocator': allocator must be one of paper, released, got 'shared'"),
    ([], "callbacks:\n  h: {name: hide, text_features: pooled}\n",
     r"m\.yaml: key 'callbacks.h.text_features': text_features must be one of projected, released, got 'pooled'"),
    (["callbacks.h.layout=expand_some"], "callbacks:\n  h: {name: hide}\n",
     r"command line: key 'callbacks.h.layout': layout must be one of"),
    (["eval.scoring=generous"], None, r"command line: key 'eval.scoring': 'generous' is not one of official, lenient"),
    (["benchmark.order=[colour_mc,nope]"], None, r"command line: key 'benchmark.order': unknown task 'nope'"),
    ([], "callbacks:\n  r: {name: no_such_thing}\n",
     r"m\.yaml: key 'callbacks.r.name': unknown callback 'no_such_thing'"),
    ([], "callbacks:\n  r: {name: replay, sampels_per_task: 3}\n",
     r"m\.yaml: key 'callbacks.r.sampels_per_task': unknown argument"),
    (["benchmark.tasks.colour_mc.scorer=magic"], None, r"benchmark.tasks.colour_mc.scorer"),
    (["benchmark.templates=fancy"], None, r"no 'fancy' templates"),
])
def test_prepare_rejects_bad_names(small_config, tmp_path, overrides, method_yaml, match):
    files = [write(tmp_path, "m.yaml", method_yaml)] if method_yaml else []
    cfg, sources = small_config(*overrides, files=files)
    with pytest.raises(ConfigError, match=match):
        ContinualRun(cfg, sources).prepare()


def test_explicit_order_list(small_config):
    cfg, sources = small_config("benchmark.order=[grounding,colour_mc]")
    run = ContinualRun(cfg, sources)
    run.prepare()
    assert [t.name for t in run.stream] == ["grounding", "colour_mc"]


def test_every_shipped_config_validates(small_config, tmp_path):
    """Each method / experiment YAML composes with the tiny-model overrides and passes `prepare`; each model YAML
    validates against a tiny model of its family."""
    from cvit.model.tiny_qwen import save_tiny_qwen2vl

    methods = sorted((CONFIGS / "method").rglob("*.yaml"))  # the composed methods too
    assert len(methods) > 10
    for path in methods + sorted((CONFIGS / "experiment").glob("*.yaml")):
        cfg, sources = small_config(files=[path])
        ContinualRun(cfg, sources).prepare()
    qwen = save_tiny_qwen2vl(tmp_path / "tiny-qwen")
    for path in sorted((CONFIGS / "model").glob("*.yaml")):
        cfg, sources = small_config(files=[path])
        if cfg.model.family == "qwen2_vl":
            cfg, sources = small_config(f"model.path={qwen}", files=[path])
        validate_config(cfg, sources)


def test_callback_argument_types_are_checked(small_config, tmp_path):
    bad = write(tmp_path, "m.yaml", "callbacks:\n  r: {name: replay, loss_weight: high}\n")
    cfg, sources = small_config(files=[bad])
    with pytest.raises(ConfigError, match=r"m\.yaml: key 'callbacks.r.loss_weight': expected float, got 'high'"):
        ContinualRun(cfg, sources).prepare()
    ok = write(tmp_path, "ok.yaml", "callbacks:\n  r: {name: replay, loss_weight: 2, size: 3}\n")
    cfg, sources = small_config(files=[ok])
    ContinualRun(cfg, sources).prepare()


class Owner(ContinualCallback):
    """A user callback taking charge of the adapter pool (for the two-owners check)."""

    owns = ("adapter_pool",)

    def __init__(self, strength: float = 1.0) -> None:
        self.strength = strength


def test_class_path_callbacks_and_two_owners_are_rejected(small_config, tmp_path):
    one = write(tmp_path, "one.yaml", "callbacks:\n  a: {class_path: 'tests.test_config:Owner', strength: 2}\n")
    cfg, sources = small_config(files=[one])
    run = ContinualRun(cfg, sources)
    run.prepare()
    assert isinstance(run.callbacks["a"], Owner) and run.callbacks["a"].strength == 2
    two = write(tmp_path, "two.yaml", "callbacks:\n  b: {class_path: 'tests.test_config:Owner'}\n")
    cfg, sources = small_config(files=[one, two])
    with pytest.raises(ConfigError, match=r"callbacks 'a' and 'b' both take charge of 'adapter_pool'"):
        ContinualRun(cfg, sources).prepare()
    bad = write(tmp_path, "bad.yaml", "callbacks:\n  c: {class_path: 'tests.test_config:write'}\n")
    cfg, sources = small_config(files=[bad])
    with pytest.raises(ConfigError, match=r"not a ContinualCallback subclass"):
        ContinualRun(cfg, sources).prepare()


class Typo(ContinualCallback):
    owns = ("adapter-pool",)  # not a Shared thing: it would never clash with the real owner


def test_owning_something_that_is_not_shared_is_refused(small_config, tmp_path):
    typo = write(tmp_path, "typo.yaml", "callbacks:\n  t: {class_path: 'tests.test_config:Typo'}\n")
    cfg, sources = small_config(files=[typo])
    with pytest.raises(ConfigError, match=r"typo\.yaml: key 'callbacks\.t': Typo\.owns names 'adapter-pool'; shared "
                                          r"things are adapter_pool, router, adapter_layer"):
        ContinualRun(cfg, sources).prepare()


def test_a_class_path_module_is_found_beside_its_yaml(small_config, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "beside_yaml_cb.py").write_text(
        "from cvit.callbacks.base import ContinualCallback\n\nclass Mine(ContinualCallback):\n    pass\n")
    mine = write(folder, "mine.yaml", "callbacks:\n  m: {class_path: 'beside_yaml_cb:Mine'}\n")
    cfg, sources = small_config(files=[mine])
    run = ContinualRun(cfg, sources)
    run.prepare()
    assert type(run.callbacks["m"]).__name__ == "Mine"
    missing = write(folder, "missing.yaml", "callbacks:\n  m: {class_path: 'nowhere_cb:Mine'}\n")
    cfg, sources = small_config(files=[missing])
    with pytest.raises(ConfigError, match=r"missing\.yaml: key 'callbacks\.m\.class_path': cannot import"):
        ContinualRun(cfg, sources).prepare()
