from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from cvit.callbacks.base import ContinualCallback
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

from cvit.errors import RunDirError
from cvit.run.loop import ContinualRun
from cvit.run.rundir import RunDirectory
from tests.conftest import CONFIGS

SHORT = ("benchmark.order=[colour_mc,count_vqa,grounding]", "train.max_steps=3")


class Crash(ContinualCallback):
    """Raises at the start of the task named `at` (a crash mid-stream)."""

    def __init__(self, at: str) -> None:
        self.at = at

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        if task.name == self.at:
            raise KeyboardInterrupt("simulated crash")


class Recorder(ContinualCallback):
    """Records the hooks it receives, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_task_start(self, trainer, module, datamodule, task):
        self.calls.append(f"start:{task.name}")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.calls.append("batch")

    def on_task_end(self, trainer, module, datamodule, task):
        self.calls.append(f"end:{task.name}")

    def training_loss(self, module, batch, outputs):
        self.calls.append("loss")
        return {"zero": outputs.logits.sum() * 0}


def test_crash_then_resume_equals_uninterrupted(small_config, tmp_path):
    replay = ("callbacks.replay.size=5",)
    files = [CONFIGS / "method" / "replay.yaml"]  # a callback with state, restored on resume
    cfg, sources = small_config(*SHORT, *replay, "run.name=full", files=files)
    full = ContinualRun(cfg, sources).run()
    expected = json.loads((full / "matrix.json").read_text())
    assert expected["completed"] == 3 and [len(r) for r in expected["matrix"]] == [1, 2, 3]

    cfg, sources = small_config(*SHORT, *replay, "run.name=crashed", files=files)
    crashing = ContinualRun(cfg, sources)
    crashing.prepare = wrap_prepare(crashing, Crash("grounding"))
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    partial = json.loads((crashing.run_dir.path / "matrix.json").read_text())
    assert partial["completed"] == 2
    assert not list(crashing.run_dir.path.rglob("*.tmp"))  # nothing half-written

    # what a SIGKILL in the middle of a write would leave behind is cleaned up on resume
    stale = crashing.run_dir.path / ".matrix.json.x1y2.tmp"
    stale.mkdir()
    (stale / "matrix.json").write_text('{"half": ')
    resumed = ContinualRun(cfg, sources, crashing.run_dir.path).run(resume=True)
    assert not stale.exists()
    got = json.loads((resumed / "matrix.json").read_text())
    assert got["matrix"] == expected["matrix"]
    assert got["unseen"] == expected["unseen"]
    stage = full / "stages" / "02_grounding"
    again = resumed / "stages" / "02_grounding"
    assert torch.load(stage / "callbacks.pt")["replay"] == torch.load(again / "callbacks.pt")["replay"]
    assert len(torch.load(again / "callbacks.pt")["replay"]["memory"]["kept"]) == 3
    weights = load_file(stage / "adapters" / "default" / "adapter_model.safetensors")
    resumed_weights = load_file(again / "adapters" / "default" / "adapter_model.safetensors")
    assert weights.keys() == resumed_weights.keys()
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)
    first = load_file(full / "stages" / "00_colour_mc" / "adapters" / "default" / "adapter_model.safetensors")
    assert any(not torch.equal(first[k], weights[k]) for k in weights)  # training moved the adapter
    assert (resumed / "report.md").is_file() and (resumed / "matrix.png").is_file()


def wrap_prepare(run: ContinualRun, extra: ContinualCallback, key: str = "crash"):
    original = run.prepare

    def prepare():
        original()
        run.callbacks[key] = extra

    return prepare


def test_resume_with_a_different_config_is_refused(small_config):
    cfg, sources = small_config(*SHORT, "run.name=a", "train.max_steps=1", "benchmark.order=[colour_mc]")
    run_dir = ContinualRun(cfg, sources).run()
    cfg, sources = small_config(*SHORT, "run.name=a", "train.max_steps=1", "benchmark.order=[colour_mc]",
                                "train.lr=0.5")
    with pytest.raises(RunDirError, match=r"different config; differing keys: train\.lr"):
        ContinualRun(cfg, sources, run_dir).run(resume=True)
    with pytest.raises(RunDirError, match="already exists"):
        ContinualRun(cfg, sources, run_dir).run()


def test_a_run_stored_before_a_callback_argument_existed_resumes_at_its_default(tmp_path):
    """A stored config without an argument a built-in callback has gained ran at its default: resuming with the
    default, written or not, is allowed; with another value it is refused, naming the argument."""
    folder = RunDirectory(tmp_path / "run")
    folder.create(yaml.safe_dump({"callbacks": {"pool": {"name": "progressive_pool", "allocation": "dynamic"}}}))
    same = {"callbacks": {"pool": {"name": "progressive_pool", "allocation": "dynamic", "allocator": "paper"}}}
    folder.check_resumable(yaml.safe_dump(same))
    same["callbacks"]["pool"]["allocator"] = "released"
    with pytest.raises(RunDirError, match=r"differing keys: callbacks\.pool\.allocator$"):
        folder.check_resumable(yaml.safe_dump(same))


def test_every_hook_is_reached_in_order_and_adapters_load_with_plain_peft(small_config, tiny_model_dir):
    cfg, sources = small_config("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=2", "run.name=hooks")
    run = ContinualRun(cfg, sources)
    recorder = Recorder()
    run.prepare = wrap_prepare(run, recorder)
    run_dir = run.run()
    assert recorder.calls == [
        "start:colour_mc", "loss", "batch", "loss", "batch", "end:colour_mc",
        "start:count_vqa", "loss", "batch", "loss", "batch", "end:count_vqa",
    ]
    adapter = run_dir / "stages" / "01_count_vqa" / "adapters" / "default"
    assert (adapter / "adapter_model.safetensors").is_file()
    base = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir)
    loaded = PeftModel.from_pretrained(base, adapter)
    trained = dict(run.module.model.named_parameters())
    for name, param in loaded.named_parameters():
        if "lora_" in name:
            assert torch.equal(param, trained[name]), name
    logs = list(Path(run_dir / "tb").rglob("events.out.tfevents*"))
    assert len(logs) >= 3  # one per task + the continual board


class Pull(ContinualCallback):
    """A loss term pulling every trainable LoRA B weight towards +1 (B starts at 0, so its gradient is -2 * 100
    everywhere: it dominates the answer loss's)."""

    def training_loss(self, module, batch, outputs):
        terms = [(p - 1).pow(2).sum() for n, p in module.named_parameters() if "lora_B" in n and p.requires_grad]
        return {"pull": 100 * torch.stack(terms).sum()}


def test_a_callback_loss_term_changes_the_update(small_config):
    weights = {}
    for name, extra in (("plain", None), ("pulled", Pull())):
        cfg, sources = small_config("benchmark.order=[colour_mc]", "train.max_steps=1", "eval.unseen=false",
                                    f"run.name={name}")
        run = ContinualRun(cfg, sources)
        if extra is not None:
            run.prepare = wrap_prepare(run, extra, "pull")
        run.run()
        weights[name] = {n: p.detach().clone() for n, p in run.module.named_parameters() if "lora_B" in n}
    assert weights["plain"] and weights["plain"].keys() == weights["pulled"].keys()
    for n, plain in weights["plain"].items():  # one AdamW step of lr along the term's sign: every entry up
        assert torch.all(weights["pulled"][n] > 0) and not torch.equal(weights["pulled"][n], plain), n


def test_replay_mixes_earlier_samples_by_reference(small_config, tmp_path):
    cfg, sources = small_config("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=1",
                                "callbacks.replay.size=5", files=[CONFIGS / "method" / "replay.yaml"])
    run = ContinualRun(cfg, sources)
    run_dir = run.run()
    buffer = run.callbacks["replay"].buffer
    assert list(buffer) == ["colour_mc", "count_vqa"] and all(len(v) == 5 for v in buffer.values())
    assert run.datamodule.replay and run.datamodule.replay[0][0].name == "colour_mc"
    assert len(run.datamodule.train_dataloader().dataset) == 32 + 5
    state = torch.load(run_dir / "stages" / "01_count_vqa" / "callbacks.pt")
    restored = type(run.callbacks["replay"])()
    restored.load_state_dict(state["replay"])
    assert restored.buffer == buffer


def test_joint_and_zeroshot_evaluate_all_tasks_once(small_config):
    for method in ("joint", "zeroshot"):
        cfg, sources = small_config("train.max_steps=2", f"run.name={method}", method=method)
        doc = json.loads((ContinualRun(cfg, sources).run() / "matrix.json").read_text())
        assert doc["stages"] == [method] and len(doc["matrix"]) == 1 and len(doc["matrix"][0]) == 6


def test_qwen2vl_runs_through_the_continual_loop(small_config, tmp_path):
    from cvit.model.tiny_qwen import save_tiny_qwen2vl

    model = save_tiny_qwen2vl(tmp_path / "tiny-qwen")
    cfg, sources = small_config("model.family=qwen2_vl", f"model.path={model}", "run.name=qwen",
                                "benchmark.order=[count_vqa,caption]", "train.max_steps=2")
    run = ContinualRun(cfg, sources)
    run_dir = run.run()
    doc = json.loads((run_dir / "matrix.json").read_text())
    assert [len(r) for r in doc["matrix"]] == [1, 2] and len(doc["unseen"][-1]) == 2
    assert (run_dir / "stages" / "01_caption" / "adapters" / "default" / "adapter_model.safetensors").is_file()


def test_a_stream_starting_with_captions_and_future_tasks(small_config):
    cfg, sources = small_config("benchmark.order=[caption,count_vqa]", "train.max_steps=1",
                                "eval.future_tasks=true", "run.name=captions-first")
    doc = json.loads((ContinualRun(cfg, sources).run() / "matrix.json").read_text())
    assert [len(r) for r in doc["matrix"]] == [1, 2] and [len(r) for r in doc["future"]] == [1, 0]


class CrashAtStep(ContinualCallback):
    """Raises after optimizer step `step` of task `task` (before that step's checkpoint is written)."""

    def __init__(self, task: str, step: int) -> None:
        self.task, self.step, self.current = task, step, ""

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        self.current = task.name

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.current == self.task and trainer.global_step == self.step:
            raise RuntimeError("simulated crash mid-task")


def test_mid_task_crash_resumes_from_the_inflight_checkpoint(small_config):
    # 4 batches per epoch, 6 steps per task, a checkpoint every 3 steps and dropout on: the crash at
    # step 5 resumes from step 3, in the middle of the first epoch, so data position, epoch order, RNG
    # and optimizer state must all come back exactly.
    common = ("benchmark.order=[colour_mc,count_vqa]", "data.batch_size=8", "train.epochs=2",
              "train.max_steps=6", "train.checkpoint_every_n_steps=3", "model.lora.dropout=0.1",
              "eval.unseen=false")
    cfg, sources = small_config(*common, "run.name=straight")
    straight = ContinualRun(cfg, sources).run()
    assert not (straight / "inflight" / "01_count_vqa").exists()  # removed once the task is saved

    cfg, sources = small_config(*common, "run.name=midtask")
    crashing = ContinualRun(cfg, sources)
    crashing.prepare = wrap_prepare(crashing, CrashAtStep("count_vqa", 5))
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.run()
    inflight = crashing.run_dir.path / "inflight" / "01_count_vqa" / "inflight.ckpt"
    checkpoint = torch.load(inflight, weights_only=False)
    assert checkpoint["global_step"] == 3
    assert checkpoint["state_dict"] and all("lora_" in k or "multi_modal_projector" in k
                                            for k in checkpoint["state_dict"])

    resumed = ContinualRun(cfg, sources, crashing.run_dir.path).run(resume=True)
    assert json.loads((resumed / "matrix.json").read_text())["matrix"] == \
        json.loads((straight / "matrix.json").read_text())["matrix"]
    adapter = Path("stages") / "01_count_vqa" / "adapters" / "default" / "adapter_model.safetensors"
    expected, got = load_file(straight / adapter), load_file(resumed / adapter)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    projector = adapter.parent.parent / "projector.safetensors"
    expected, got = load_file(straight / projector), load_file(resumed / projector)
    assert expected and all(torch.equal(expected[k], got[k]) for k in expected)


def refused_before_loading(small_config, files, override: str, message: str) -> None:
    """A run with `override` fails in `prepare` with a ConfigError matching `message`, no model loaded."""
    from cvit.errors import ConfigError

    cfg, sources = small_config(override, files=files)
    run = ContinualRun(cfg, sources)
    with pytest.raises(ConfigError, match=message):
        run.prepare()
    assert run.module is None


def straight_and_resumed(small_config, overrides: tuple[str, ...], files, crash_at: str):
    """(uninterrupted run, run crashed at the start of task `crash_at` then resumed), both finished, with the
    same config; asserts their accuracy matrices are equal."""
    cfg, sources = small_config(*overrides, "run.name=straight", files=files)
    straight = ContinualRun(cfg, sources)
    straight.run()
    cfg, sources = small_config(*overrides, "run.name=crashed", files=files)
    crashing = ContinualRun(cfg, sources)
    crashing.prepare = wrap_prepare(crashing, Crash(crash_at))
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    resumed = ContinualRun(cfg, sources, crashing.run_dir.path)
    resumed.run(resume=True)
    assert json.loads((resumed.run_dir.path / "matrix.json").read_text())["matrix"] == \
        json.loads((straight.run_dir.path / "matrix.json").read_text())["matrix"]
    return straight, resumed


class Unsaveable(ContinualCallback):
    """A state torch.load(weights_only=True) would refuse at resume (an arbitrary object)."""

    def state_dict(self):
        return {"fine": [1, "a", torch.zeros(1)], "bad": {"thing": object()}}


def test_a_state_a_resume_cannot_reload_is_refused_when_saved(small_config):
    cfg, sources = small_config("benchmark.order=[colour_mc]", "train.max_steps=1", "eval.unseen=false",
                                "run.name=unsaveable")
    run = ContinualRun(cfg, sources)
    run.prepare = wrap_prepare(run, Unsaveable(), "odd")
    with pytest.raises(TypeError, match=r"callback 'odd' state_dict\(\)\['bad'\]\['thing'\] is a object"):
        run.run()
    assert not (run.run_dir.path / "stages" / "00_colour_mc").exists()  # no half-written stage
    assert not (run.run_dir.path / "matrix.json").exists()  # nothing counts as completed


def stage_events(run_dir: Path, stage: str):
    """The TensorBoard events of stage `stage`'s training (e.g. "01_count_vqa"), loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run_dir / "tb" / "train" / stage)).Reload()
