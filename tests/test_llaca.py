"""LLaCA's callbacks through the continual loop: grouping decisions, routing, EMA weights written at task end,
mid-task resume of the EMA state, 4-bit loading."""

from __future__ import annotations

import json

import bitsandbytes as bnb
import pytest
import torch
from cvit.callbacks.base import ContinualCallback
from safetensors.torch import load_file

from cvit.errors import ConfigError
from cvit.run.loop import ContinualRun
from tests.conftest import CONFIGS
from tests.test_loop import CrashAtStep, wrap_prepare

LLACA = [CONFIGS / "method" / "llaca.yaml"]
GROUPED = "benchmark.order=[colour_mc,count_vqa,shape_cls]"  # count_vqa and shape_cls share their template


class EMAProbe(ContinualCallback):
    """Keeps a copy of the EMA callback's tensors after every optimizer step, keyed by (task index, step),
    and the last parameters."""

    def __init__(self, ema) -> None:
        self.ema, self.states, self.params, self.task = ema, {}, {}, -1

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        self.task = task.index

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.states[(self.task, trainer.global_step)] = [t.clone() for t in self.ema.ema.ema]
        self.params = {n: p.detach().clone() for n, p in zip(self.ema.names, self.ema.params, strict=True)}


def with_probe(run: ContinualRun) -> None:
    original = run.prepare

    def prepare():
        original()
        run.callbacks["probe"] = EMAProbe(run.callbacks["ema"])

    run.prepare = prepare


def test_grouping_reuses_adapters_routes_tests_and_saves_ema_weights(small_config):
    cfg, sources = small_config(GROUPED, "train.max_steps=4", "run.name=llaca", files=LLACA)
    run = ContinualRun(cfg, sources)
    with_probe(run)
    run_dir = run.run()
    grouping = run.callbacks["grouping"]
    assert [(d["task"], d["adapter"], d["new"]) for d in grouping.decisions] == [
        ("colour_mc", "default", True), ("count_vqa", "group1", True), ("shape_cls", "group1", False)]
    assert len(grouping.codebook.groups) == 2
    assert sorted(run.module.pool.names) == ["default", "group1"]

    # what was saved after the last task is the EMA, not the last step's weights
    probe = run.callbacks["probe"]
    last_ema = probe.states[max(probe.states)]
    saved = load_file(run_dir / "stages" / "02_shape_cls" / "adapters" / "group1" / "adapter_model.safetensors")
    names = [n for n in probe.params if "lora_" in n]
    assert names and all(".group1." in n for n in names)  # only the running group's adapter is tracked
    by_name = dict(zip(probe.params, last_ema, strict=True))
    for name in names:
        key = name.replace("model.base_model", "base_model").replace(".group1", "")
        assert torch.equal(saved[key], by_name[name]), name
        assert not torch.equal(by_name[name], probe.params[name])  # the EMA lags the parameters

    # the colour adapter was not touched by the later tasks
    first = load_file(run_dir / "stages" / "00_colour_mc" / "adapters" / "default" / "adapter_model.safetensors")
    last = load_file(run_dir / "stages" / "02_shape_cls" / "adapters" / "default" / "adapter_model.safetensors")
    assert all(torch.equal(first[k], last[k]) for k in first)

    # routing: a batch mixing tasks is split by instruction group, each row under its group's adapter
    router, dm = run.module.router, run.datamodule
    items = [dm.test_set(dm.tasks[name])[0] for name in ("colour_mc", "shape_cls", "count_vqa", "colour_mc")]
    batch = dm.collator.eval_batch(items)
    groups = {tuple(rows) for rows, _ in router.route(batch)}
    assert groups == {(0, 3), (1, 2)}
    run.module.eval()
    mixed = run.module.generate(batch, 4)
    for rows, adapter in (((0, 3), "default"), ((1, 2), "group1")):
        with run.module.pool.activated([adapter]):
            alone = run.module.model.generate(
                **{k: v[list(rows)] for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")},
                max_new_tokens=4, do_sample=False, pad_token_id=dm.collator.pad_id)
        texts = dm.collator.tokenizer.batch_decode(alone[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        assert [mixed[r] for r in rows] == [t.strip() for t in texts]


def test_ema_state_resumes_mid_task_identically(small_config):
    common = (GROUPED, "data.batch_size=8", "train.epochs=2", "train.max_steps=6",
              "train.checkpoint_every_n_steps=3", "eval.unseen=false")
    cfg, sources = small_config(*common, "run.name=straight", files=LLACA)
    straight_run = ContinualRun(cfg, sources)
    with_probe(straight_run)
    straight = straight_run.run()

    cfg, sources = small_config(*common, "run.name=midtask", files=LLACA)
    crashing = ContinualRun(cfg, sources)
    crashing.prepare = wrap_prepare(crashing, CrashAtStep("shape_cls", 5))
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.run()
    checkpoint = torch.load(crashing.run_dir.path / "inflight" / "02_shape_cls" / "inflight.ckpt", weights_only=False)
    stored = checkpoint["DynamicEMACallback[ema]/tensors"]
    assert checkpoint["global_step"] == 3 and len(stored["state"]["ema"]) == len(stored["names"]) > 0

    resumed_run = ContinualRun(cfg, sources, crashing.run_dir.path)
    with_probe(resumed_run)
    resumed = resumed_run.run(resume=True)
    straight_states, resumed_states = straight_run.callbacks["probe"].states, resumed_run.callbacks["probe"].states
    steps = [key for key in resumed_states if key[0] == 2 and key[1] in (4, 5, 6)]
    assert len(steps) == 3
    for key in steps:
        assert all(torch.equal(a, b) for a, b in zip(straight_states[key], resumed_states[key], strict=True))
    assert json.loads((resumed / "matrix.json").read_text())["matrix"] == \
        json.loads((straight / "matrix.json").read_text())["matrix"]


def test_llaca_under_4bit_tracks_the_adapters_and_projector_never_the_base(small_config):
    cfg, sources = small_config("benchmark.order=[count_vqa]", "train.max_steps=3", "model.quantization=nf4",
                                "run.name=llaca-nf4", files=LLACA)
    run = ContinualRun(cfg, sources)
    with_probe(run)
    run.run()
    module = run.module
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in module.modules())
    names = run.callbacks["probe"].params
    assert any("lora_" in n for n in names) and any("multi_modal_projector" in n for n in names)
    assert all("lora_" in n or "multi_modal_projector" in n for n in names)
    steps = run.callbacks["probe"].states
    first, last = steps[min(steps)], steps[max(steps)]
    assert any(not torch.equal(a, b) for a, b in zip(first, last, strict=True))  # the EMA moved


def test_grouping_needs_a_sequential_stream(small_config):
    cfg, sources = small_config("method.mode=joint", files=LLACA)
    with pytest.raises(ConfigError, match="callbacks.grouping.*sequential"):
        ContinualRun(cfg, sources).prepare()


def test_dynamic_ema_composes_with_another_methods_callbacks(small_config, tmp_path):
    """EMA of whatever the other callbacks make trainable: ProgLoRA's new block, key and projector."""
    composed = tmp_path / "composed.yaml"
    composed.write_text(
        "include: [" + str(CONFIGS / "method" / "proglora_dynamic.yaml") + "]\n"
        "callbacks:\n  recall: null\n  ema: {name: dynamic_ema, formula: released}\n"
    )
    cfg, sources = small_config("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=3", "eval.unseen=false",
                                "callbacks.pool.embedding_samples=8", "run.name=composed", files=[composed])
    run = ContinualRun(cfg, sources)
    with_probe(run)
    run.run()
    names = list(run.callbacks["probe"].params)
    assert any(".block1." in n for n in names) and any("extras.allocation.projector" in n for n in names)
    assert "extras.allocation.keys.1" in names and "extras.allocation.keys.0" not in names  # frozen key


def test_fusion_before_ema_is_refused(small_config, tmp_path):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("include: [" + str(CONFIGS / "method" / "hide.yaml") + "]\n"
                     "callbacks:\n  ema: {name: dynamic_ema}\n")
    cfg, sources = small_config(files=[wrong])
    with pytest.raises(ConfigError, match="callbacks.ema.*after 'hide'.*fusion before EMA"):
        ContinualRun(cfg, sources).prepare()


def test_ema_updates_once_per_optimizer_step_under_gradient_accumulation(small_config):
    cfg, sources = small_config("benchmark.order=[count_vqa]", "train.max_steps=3", "data.batch_size=8",
                                "train.epochs=2", "train.accumulate_grad_batches=2", "eval.unseen=false",
                                "run.name=accumulate", files=[CONFIGS / "method" / "dynamic_ema.yaml"])
    run = ContinualRun(cfg, sources)
    original = run.prepare
    updates, batches = [], []

    def prepare():
        original()
        ema = run.callbacks["ema"]
        step = ema.ema.step
        ema.ema.step = lambda params, grads: updates.append(1) or step(params, grads)
        run.callbacks["count"] = type("Count", (ContinualCallback,), {
            "on_train_batch_end": lambda self, *args: batches.append(1)})()

    run.prepare = prepare
    run.run()
    assert len(batches) == 6 and len(updates) == 3


class AdapterAtStart(ContinualCallback):
    """The LoRA weights of the adapter each task trains, as the first task that trains it starts its fit."""

    def __init__(self) -> None:
        self.weights: dict[str, dict[str, torch.Tensor]] = {}

    def on_train_start(self, trainer, module) -> None:
        [adapter] = module.pool.trainable
        self.weights.setdefault(adapter, {n.replace(f".{adapter}.", "."): p.detach().clone()
                                          for n, p in module.named_parameters() if f".{adapter}." in n})


def test_released_pipeline_copies_groups_skips_the_ema_on_new_ones_and_routes_test_sets(small_config):
    cfg, sources = small_config(GROUPED, "train.max_steps=3", "run.name=llaca-released",
                                files=[CONFIGS / "method" / "llaca_released.yaml"])
    run = ContinualRun(cfg, sources)
    probe = AdapterAtStart()
    run.prepare = wrap_prepare(run, probe)
    run_dir = run.run()
    grouping, ema = run.callbacks["grouping"], run.callbacks["ema"]
    assert [(d["adapter"], d["new"]) for d in grouping.decisions] == [("default", True), ("group1", True),
                                                                      ("group1", False)]
    # the new group started from the weights the previous task left in its adapter
    first = load_file(run_dir / "stages" / "00_colour_mc" / "adapters" / "default" / "adapter_model.safetensors")
    started = {k.replace("model.base_model", "base_model"): v for k, v in probe.weights["group1"].items()}
    assert first.keys() == started.keys() and all(torch.equal(first[k], started[k]) for k in first)
    assert ema.skipped == ["colour_mc", "count_vqa"]  # EMA only on the task that retrained a group
    # routing once per test set: every row of a task goes to its task's group
    router, dm = run.module.router, run.datamodule
    assert router.by_task["colour_mc"] == 0 and router.by_task["shape_cls"] == router.by_task["count_vqa"] == 1
    items = [dm.test_set(dm.tasks[name])[0] for name in ("colour_mc", "shape_cls", "colour_mc")]
    assert {tuple(rows) for rows, _ in router.route(dm.collator.eval_batch(items))} == {(0, 2), (1,)}


class UnitProbe(ContinualCallback):
    """(EMA units, tracked tensors, distinct module layers among them) at every optimizer step."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        from cvit.callbacks.dynamic_ema import DynamicEMACallback

        from cvit.methods.ema import layer_units

        ema = next(cb for cb in trainer.callbacks if isinstance(cb, DynamicEMACallback))
        self.seen.append((ema.ema.unit_count, len(ema.params), len(set(layer_units(ema.names)))))


def test_paper_pipeline_starts_new_groups_fresh_and_runs_the_ema_on_every_task(small_config):
    cfg, sources = small_config(GROUPED, "train.max_steps=2", "run.name=llaca-paper", "eval.unseen=false",
                                files=LLACA)
    run = ContinualRun(cfg, sources)
    probe, units = AdapterAtStart(), UnitProbe()
    run.prepare = wrap_prepare(run, probe)
    run.prepare = wrap_prepare(run, units, key="units")
    run_dir = run.run()
    # one beta per module layer: A and B of a LoRA layer (and a projector linear's weight and bias) share a unit
    assert units.seen and all(count == layers < tensors for count, tensors, layers in units.seen)
    first = load_file(run_dir / "stages" / "00_colour_mc" / "adapters" / "default" / "adapter_model.safetensors")
    started = {k.replace("model.base_model", "base_model"): v for k, v in probe.weights["group1"].items()}
    lora_b = [k for k in first if "lora_B" in k]
    assert lora_b and all(not torch.any(started[k]) for k in lora_b)  # peft's fresh init: B = 0
    assert any(torch.any(first[k]) for k in lora_b)
    assert run.callbacks["ema"].skipped == [] and run.callbacks["ema"].granularity == "layer"
    # TensorBoard: the fallback rate at every logged step; the mean beta of the units that did not fall back
    # apart, inside (0, 1) whenever one did not
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run_dir / "tb" / "train").glob("00_*")))).Reload()
    rates = [e.value for e in events.Scalars("ema/fallback_rate")]
    assert rates and all(0 <= r <= 1 for r in rates)
    dynamic = [e.value for e in events.Scalars("ema/beta_dynamic_mean")] \
        if "ema/beta_dynamic_mean" in events.Tags()["scalars"] else []
    assert len(dynamic) == sum(r < 1 for r in rates) and all(0 < b < 1 for b in dynamic)


def test_a_skipped_task_leaves_no_ema_state_for_the_next_and_resume_keeps_the_previous_group():
    """skip_new_adapters: a task skipped after an in-flight restore must not hand its empty EMA state to the
    next task; a resumed grouping copies the adapter of the last completed task into a new group."""
    from types import SimpleNamespace

    from cvit.callbacks.dynamic_ema import DynamicEMACallback
    from cvit.callbacks.instruction_grouping import InstructionGrouping

    ema = DynamicEMACallback(formula="released", skip_new_adapters=True)
    param = torch.nn.Parameter(torch.ones(2))
    pool = SimpleNamespace(trainable=["default"], names=["default"])
    module = SimpleNamespace(pool=pool, named_parameters=lambda: [("m.q.lora_A.default.weight", param)])
    trainer = SimpleNamespace(global_step=0)
    ema.on_task_start(trainer, module, None, SimpleNamespace(name="a"))
    ema.on_load_checkpoint(trainer, module, {ema.tensors_key: {"names": [], "state": ema.ema.state()}})
    ema.on_train_start(trainer, module)
    assert ema.skipped == ["a"] and ema.restored is None and not ema.params
    ema.on_task_end(trainer, module, None, SimpleNamespace(name="a"))
    ema.on_task_start(trainer, module, None, SimpleNamespace(name="b"))
    ema.on_train_start(trainer, module)  # the adapter now existed before the task: the EMA runs
    assert ema.running and ema.names == ["m.q.lora_A.default.weight"] and ema.skipped == ["a"]

    grouping = InstructionGrouping(new_group="previous")
    grouping.load_state_dict({"codebook": {"groups": [{"adapter": "default", "instructions": ["x"]},
                                                      {"adapter": "group1", "instructions": ["y"]}]},
                              "decisions": [{"task": "t0", "adapter": "default"}, {"task": "t1", "adapter": "group1"}]})
    assert grouping.adapter == "group1"


class Trajectory(ContinualCallback):
    """The EMA callback's tensors and its parameters after every optimizer step."""

    def __init__(self, ema) -> None:
        self.ema, self.rows, self.names = ema, [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.rows.append(([t.clone() for t in self.ema.ema.ema], [p.detach().clone() for p in self.ema.params]))
        self.names = list(self.ema.names)


def test_fixed_ema_through_the_callback_is_the_plain_ema_of_the_steps(small_config):
    """configs/method/stable_ema.yaml (the README's fixed-decay row): ema_k = 0.99 ema_{k-1} + 0.01 theta_k after
    every optimizer step, written back into the weights at the task's end."""
    cfg, sources = small_config("benchmark.order=[count_vqa]", "data.batch_size=8", "train.max_steps=4",
                                "eval.unseen=false", "run.name=stable", files=[CONFIGS / "method" / "stable_ema.yaml"])
    run = ContinualRun(cfg, sources)
    original = run.prepare

    def prepare():
        original()
        run.callbacks["trajectory"] = Trajectory(run.callbacks["ema"])

    run.prepare = prepare
    run.run()
    rows = run.callbacks["trajectory"].rows
    assert len(rows) == 4
    for (before, _), (after, params) in zip(rows[:-1], rows[1:], strict=True):
        assert any(not torch.equal(a, p) for a, p in zip(after, params, strict=True))  # the EMA lags the weights
        for old, new, param in zip(before, after, params, strict=True):
            assert torch.allclose(new, 0.99 * old + 0.01 * param, atol=1e-7)
    trained = dict(run.module.named_parameters())
    for name, value in zip(run.callbacks["trajectory"].names, rows[-1][0], strict=True):
        assert torch.allclose(trained[name], value.to(trained[name].dtype)), name
