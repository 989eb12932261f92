"""The wiring between the parts and a run: train mode in every fit, a fresh optimizer and schedule per task,
each task's generation budget, the predictions files, what joint and zero-shot runs train."""

from __future__ import annotations

import json
import math

import pytest
import torch
from cvit.callbacks.base import ContinualCallback
from transformers import LlavaForConditionalGeneration

from cvit.errors import RunDirError
from cvit.run.loop import ContinualRun
from tests.test_loop import refused_before_loading, wrap_prepare

TWO = ("benchmark.order=[colour_mc,count_vqa]", "eval.unseen=false")


class Watch(ContinualCallback):
    """Per task: whether every submodule trains at each batch, and (lr, optimizer id, optimizer state entries)
    at each optimizer step; the optimizers' classes."""

    def __init__(self) -> None:
        self.task, self.modes, self.steps, self.batches, self.optimizers = "", {}, {}, {}, set()

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        self.task = task.name
        self.modes[task.name], self.steps[task.name], self.batches[task.name] = [], [], 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.modes[self.task].append(all(m.training for m in module.model.modules()))
        self.batches[self.task] += 1

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        super().on_before_optimizer_step(trainer, module, optimizer)
        self.steps[self.task].append((optimizer.param_groups[0]["lr"], id(optimizer), len(optimizer.state)))
        self.optimizers.add(type(optimizer).__name__)


def test_every_fit_trains_in_train_mode_with_a_fresh_optimizer_and_schedule(small_config):
    # 6 batches of 8 per epoch, 2 per optimizer step, 3 steps per task: the schedule spans 3 steps
    cfg, sources = small_config(*TWO, "data.max_train_samples=48", "data.batch_size=8",
                                "train.accumulate_grad_batches=2", "train.max_steps=3", "train.warmup_ratio=0",
                                "model.lora.dropout=0.5",
                                "run.name=wiring")
    run = ContinualRun(cfg, sources)
    watch = Watch()
    run.prepare = wrap_prepare(run, watch, "watch")
    run.run()
    # models load in eval mode and each task's evaluation leaves them there: the fit must switch back (dropout on)
    assert watch.modes == {"colour_mc": [True] * 6, "count_vqa": [True] * 6}
    assert watch.batches == {"colour_mc": 6, "count_vqa": 6}
    lr = cfg.train.lr
    cosine = [lr * 0.5 * (1 + math.cos(math.pi * k / 3)) for k in range(3)]
    for task, steps in watch.steps.items():
        assert [s[0] for s in steps] == [pytest.approx(v, rel=1e-6) for v in cosine], task  # the schedule restarts
        assert steps[0][2] == 0 and len({s[1] for s in steps}) == 1, task  # a new AdamW, empty at the first step
    assert watch.steps["colour_mc"][0][1] != watch.steps["count_vqa"][0][1]


class Budgets(ContinualCallback):
    """Records (rows, max_new_tokens) of every generate call of the module, leaving generation as it is."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        if getattr(module.generate, "__name__", "") == "recording":
            return
        generate = module.generate

        def recording(batch, max_new_tokens):
            self.calls.append((len(batch["uids"]), max_new_tokens))
            return generate(batch, max_new_tokens)

        module.generate = recording


def test_each_task_generates_with_its_budget_and_predictions_name_every_record(small_config):
    # colour_mc answers in 3 tokens, count_vqa in 4 (configs/benchmark/synthetic.yaml): two budgets, one stage
    cfg, sources = small_config(*TWO, "train.max_steps=1", "data.max_test_samples=5",
                                "benchmark.tasks.count_vqa.max_new_tokens=7", "run.name=budgets")
    run = ContinualRun(cfg, sources)
    budgets = Budgets()
    run.prepare = wrap_prepare(run, budgets, "budgets")
    run_dir = run.run()
    budget = {t.name: t.max_new_tokens for t in run.stream}
    assert budget == {"colour_mc": 3, "count_vqa": 7}
    # stage 0 evaluates colour_mc (count_vqa too where future tasks are evaluated), stage 1 both
    assert budgets.calls[0] == (5, 3) and budgets.calls[-2:] == [(5, 3), (5, 7)]
    dm = run.datamodule
    for task in run.stream:
        lines = (run_dir / "predictions" / "01_count_vqa" / f"{task.name}.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        records = dm.test_records[task.name]
        assert [r["question_id"] for r in rows] == [rec.uid for rec in records]
        assert [r["answers"] for r in rows] == [list(rec.answers) for rec in records]
        assert all(0 <= r["score"] <= 1 and isinstance(r["follows"], bool) for r in rows)
        assert all(len(r["prediction"].split()) <= budget[task.name] for r in rows)  # word-level tokenizer
        doc = json.loads((run_dir / "matrix.json").read_text())
        assert doc["details"][task.name]["01_count_vqa"]["score"] == 100 * sum(r["score"] for r in rows) / len(rows)


class Tasks(ContinualCallback):
    """The task of every training row seen."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.seen += batch["tasks"]


def test_joint_trains_on_every_tasks_data_and_zeroshot_changes_no_weight(small_config, tiny_model_dir):
    cfg, sources = small_config(*TWO, "train.max_steps=-1", "run.name=joint", method="joint")
    joint = ContinualRun(cfg, sources)
    tasks = Tasks()
    joint.prepare = wrap_prepare(joint, tasks, "tasks")
    joint.run()
    assert sorted(tasks.seen) == ["colour_mc"] * 32 + ["count_vqa"] * 32  # one epoch over both tasks' data
    cfg, sources = small_config(*TWO, "run.name=zeroshot", method="zeroshot")
    zeroshot = ContinualRun(cfg, sources)
    zeroshot.run()
    fresh = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir).state_dict()
    weights = {n.replace(".base_layer", ""): p for n, p in zeroshot.module.model.get_base_model().state_dict().items()
               if "lora_" not in n}
    assert weights.keys() == fresh.keys() and all(torch.equal(weights[n], fresh[n]) for n in fresh)
    lora_b = [p for n, p in zeroshot.module.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(not torch.any(p) for p in lora_b)  # the adapter was never trained


def test_the_optimizer_and_schedule_come_from_the_config(small_config):
    cfg, sources = small_config("benchmark.order=[colour_mc]", "eval.unseen=false", "data.batch_size=8",
                                "train.max_steps=4", "train.warmup_ratio=0.5",
                                "train.optimizer.class_path=torch.optim.SGD", "train.optimizer.kwargs.momentum=0.9",
                                "train.schedule.name=linear", "run.name=sgd")
    run = ContinualRun(cfg, sources)
    watch = Watch()
    run.prepare = wrap_prepare(run, watch, "watch")
    run.run()
    assert watch.optimizers == {"SGD"}
    lr = cfg.train.lr  # linear: 2 warm-up steps from 0, then down to 0 at step 4
    assert [s[0] for s in watch.steps["colour_mc"]] == [pytest.approx(v) for v in (0.0, lr / 2, lr, lr / 2)]


@pytest.mark.parametrize(("override", "message"), [
    ("train.optimizer.class_path=torch.optim.NoSuch", r"train\.optimizer\.class_path': cannot import"),
    ("train.optimizer.class_path=torch.nn.Linear", r"is not a torch\.optim\.Optimizer"),
    ("train.optimizer.kwargs.lr=0.1", r"train\.optimizer\.kwargs\.lr': not an argument .* from train"),
    ("train.optimizer.kwargs.nesterov_typo=1", r"train\.optimizer\.kwargs\.nesterov_typo'"),
    ("train.schedule.name=cosine_typo", r"train\.schedule\.name': 'cosine_typo' is not one of"),
    ("train.schedule.kwargs.num_cycles_typo=2", r"train\.schedule\.kwargs\.num_cycles_typo'"),
])
def test_a_bad_optimizer_or_schedule_is_refused_before_loading(small_config, override, message):
    refused_before_loading(small_config, [], override, message)


def test_a_run_made_before_a_config_key_existed_resumes(small_config):
    """A key the schema gained later (here the optimizer) counts as its default for a stored config without it."""
    import yaml

    from tests.test_loop import Crash

    cfg, sources = small_config(*TWO, "train.max_steps=1", "run.name=old")
    crashing = ContinualRun(cfg, sources)
    crashing.prepare = wrap_prepare(crashing, Crash("count_vqa"))
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    stored_file = crashing.run_dir.path / "config.yaml"
    stored = yaml.safe_load(stored_file.read_text())
    del stored["train"]["optimizer"], stored["train"]["schedule"]
    stored_file.write_text(yaml.safe_dump(stored))
    resumed = ContinualRun(cfg, sources, crashing.run_dir.path)
    resumed.run(resume=True)
    assert json.loads((crashing.run_dir.path / "matrix.json").read_text())["completed"] == 2
    cfg, sources = small_config(*TWO, "train.max_steps=1", "run.name=old", "train.schedule.name=linear")
    with pytest.raises(RunDirError, match=r"differing keys: train\.schedule\.name"):
        ContinualRun(cfg, sources, crashing.run_dir.path).run(resume=True)
