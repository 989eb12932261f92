"""The shared multimodal projector: one trainable module beside every adapter of every pool method, its own
learning rate, saved with each stage, restored on resume, loadable next to the peft adapters, counted."""

from __future__ import annotations

import json

import pytest
import torch
from cvit.callbacks.base import ContinualCallback
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

from cvit.errors import ConfigError
from cvit.model.pool import PROJECTOR_FILE
from cvit.run.loop import ContinualRun
from tests.conftest import CONFIGS
from tests.test_loop import straight_and_resumed

TWO = ("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=2", "eval.unseen=false")
PROJECTOR = ("model.lora.train_projector=true", "model.lora.projector_lr=1e-3")
POOL_METHODS = {
    "llaca": ["callbacks.grouping.threshold=1.0"],  # every task opens a new group: two adapters
    "proglora_static": ["callbacks.pool.embedding_samples=8", "callbacks.recall.phi=4"],
    "proglora_dynamic": ["callbacks.pool.embedding_samples=8", "callbacks.recall.phi=4"],
    "hide": ["callbacks.hide.anchor_samples=8"],
}


class ProjectorProbe(ContinualCallback):
    """Per task: whether the projector had a non-zero gradient at an optimizer step, and the names of the
    trainable adapters' parameters then."""

    def __init__(self) -> None:
        self.grads: dict[str, bool] = {}
        self.task = ""

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        self.task = task.name

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        grads = [p.grad for p in module.pool.projector.values()]
        self.grads[self.task] = all(g is not None for g in grads) and any(bool(torch.any(g != 0)) for g in grads)


def projector_names(module) -> list[str]:
    return [n for n, p in module.named_parameters() if "multi_modal_projector" in n]


@pytest.mark.parametrize("method", sorted(POOL_METHODS))
def test_every_pool_method_trains_one_shared_projector(small_config, method):
    cfg, sources = small_config(*TWO, *PROJECTOR, *POOL_METHODS[method], f"run.name=projector-{method}", method=method)
    run = ContinualRun(cfg, sources)
    probe = ProjectorProbe()
    prepare = run.prepare

    def with_probe():
        prepare()
        run.callbacks["probe"] = probe

    run.prepare = with_probe
    base = LlavaForConditionalGeneration.from_pretrained(cfg.model.path).model.multi_modal_projector.state_dict()
    run_dir = run.run()
    module = run.module
    assert len(module.pool.names) >= 2  # several adapters ...
    names = projector_names(module)
    assert len(names) == 4 and not any("modules_to_save" in n or "original_module" in n for n in names)  # ... one
    assert probe.grads == {"colour_mc": True, "count_vqa": True}  # the projector learns on every task
    stages = [load_file(run_dir / "stages" / s / "adapters" / PROJECTOR_FILE) for s in ("00_colour_mc", "01_count_vqa")]
    key = "model.multi_modal_projector.linear_1.weight"
    assert not torch.equal(stages[0][key], base["linear_1.weight"])
    assert not torch.equal(stages[1][key], stages[0][key])  # it drifts across tasks


def test_projector_learning_rate_is_its_own_parameter_group(small_config):
    cfg, sources = small_config(*TWO, *PROJECTOR, "train.lr=0.01", "train.warmup_ratio=0", "run.name=groups")
    run = ContinualRun(cfg, sources)
    run.prepare()
    run.load_model()
    groups = run.module.parameter_groups()
    projector = {id(p) for p in run.module.pool.projector.values()}
    assert [g["lr"] for g in groups] == [0.01, 1e-3]
    assert {id(p) for p in groups[1]["params"]} == projector and len(projector) == 4
    assert not projector & {id(p) for p in groups[0]["params"]}
    assert all(".lora_" in n for n, p in run.module.named_parameters() if p.requires_grad and id(p) not in projector)
    cfg, sources = small_config(*TWO, "model.lora.train_projector=true", "model.lora.projector_lr=null",
                                "train.lr=0.01", "run.name=same-lr")
    run = ContinualRun(cfg, sources)
    run.prepare()
    run.load_model()
    assert [g["lr"] for g in run.module.parameter_groups()] == [0.01, 0.01]


def test_projector_resumes_and_loads_beside_the_peft_adapters(small_config, tiny_model_dir):
    overrides = ("benchmark.order=[colour_mc,count_vqa,grounding]", "train.max_steps=2", "eval.unseen=false",
                 *PROJECTOR, *POOL_METHODS["proglora_static"])
    straight, resumed = straight_and_resumed(small_config, overrides, [CONFIGS / "method" / "proglora_static.yaml"],
                                             crash_at="count_vqa")
    last = "stages/02_grounding/adapters"
    expected, got = load_file(straight.run_dir.path / last / PROJECTOR_FILE), \
        load_file(resumed.run_dir.path / last / PROJECTOR_FILE)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    # a user's load: the projector into the base model, then the adapter with plain peft
    base = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir)
    missing, unexpected = base.load_state_dict(got, strict=False)
    assert not unexpected
    loaded = PeftModel.from_pretrained(base, resumed.run_dir.path / last / "default")
    trained = dict(resumed.module.model.named_parameters())
    for name, param in loaded.named_parameters():
        if "multi_modal_projector" in name or "lora_" in name:
            assert torch.equal(param, trained[name]), name
    # counted by hand: linear_1 64x128 + 128, linear_2 128x128 + 128 (tiny LLaVA: vision 64, text 128)
    params = json.loads((straight.run_dir.path / "matrix.json").read_text())["parameters"]
    by_hand = 64 * 128 + 128 + 128 * 128 + 128
    lora = straight.module.pool.parameter_count(straight.module.pool.names)
    assert params[-1]["stored"] == lora + by_hand
    assert params[-1]["trainable"] == straight.module.pool.parameter_count(["block2"]) + by_hand


def test_projector_options_are_checked_before_loading(small_config):
    cfg, sources = small_config("model.lora.train_projector=false", "model.lora.projector_lr=2e-5")
    with pytest.raises(ConfigError, match=r"command line: key 'model.lora.projector_lr': set, but the projector is "
                                          "frozen"):
        ContinualRun(cfg, sources).prepare()
    cfg, sources = small_config("model.lora.train_projector=true", "model.lora.projector_lr=0")
    with pytest.raises(ConfigError, match="'model.lora.projector_lr': must be > 0"):
        ContinualRun(cfg, sources).prepare()
    cfg, sources = small_config("model.chat_format=chatml")
    with pytest.raises(ConfigError, match="'model.chat_format': 'chatml' is not one of minimal, llava_v1"):
        ContinualRun(cfg, sources).prepare()
