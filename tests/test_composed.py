"""The composed methods (configs/method/composed/): callbacks of different papers in one YAML, each mechanism
acting in the same run; and the combinations the registry refuses, each with what to change."""

from __future__ import annotations

import pytest
import torch
from cvit.callbacks.base import ContinualCallback

from cvit.errors import ConfigError
from cvit.run.loop import ContinualRun
from tests.conftest import CONFIGS

COMPOSED = CONFIGS / "method" / "composed"
SHORT = ("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=3", "eval.unseen=false")
PROBE = "callbacks:\n  probe: {class_path: 'tests.test_composed:TrainedWeights'}\n"


class TrainedWeights(ContinualCallback):
    """Keeps, at each fit's end (before any task-end hook), the trainable tensors as trained and the names the
    dynamic EMA tracked in that fit."""

    def __init__(self) -> None:
        self.trained: dict[str, dict[str, torch.Tensor]] = {}
        self.ema_names: dict[str, list[str]] = {}
        self.task = ""

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        self.task = task.name

    def on_train_end(self, trainer, module) -> None:
        self.trained[self.task] = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        ema = next((c for c in trainer.callbacks if type(c).__name__ == "DynamicEMACallback"), None)
        self.ema_names[self.task] = list(ema.names) if ema is not None else []


def composed_run(small_config, tmp_path, method: str, *extra: str) -> ContinualRun:
    probe = tmp_path / "probe.yaml"
    probe.write_text(PROBE)
    cfg, sources = small_config(*SHORT, f"run.name={method}", *extra, files=[COMPOSED / f"{method}.yaml", probe])
    run = ContinualRun(cfg, sources)
    run.run()
    return run


def ema_wrote(run: ContinualRun, task: str) -> list[str]:
    """The tracked tensors whose final value differs from the trained one (the EMA replaced them)."""
    final = dict(run.module.named_parameters())
    trained = run.callbacks["probe"].trained[task]
    return [n for n in run.callbacks["probe"].ema_names[task] if not torch.equal(final[n], trained[n])]


def test_proglora_ema_isolates_blocks_recalls_and_averages_what_each_task_trains(small_config, tmp_path):
    run = composed_run(small_config, tmp_path, "proglora_ema", "callbacks.recall.phi=6",
                       "callbacks.pool.embedding_samples=8")
    assert run.module.pool.names == ["default", "block1"]  # a block per task
    names = run.callbacks["probe"].ema_names["count_vqa"]
    assert any(".block1." in n for n in names) and not any(".default." in n for n in names)  # the frozen block
    assert any("multi_modal_projector" in n for n in names)
    assert ema_wrote(run, "count_vqa")  # the evaluated weights are the EMA's, not the last step's
    assert run.callbacks["recall"].recalled["count_vqa"]["colour_mc"] > 0  # the KL recall replayed task 1


def test_smolora_replay_mixes_stored_records_into_the_mixture_s_training(small_config, tmp_path):
    run = composed_run(small_config, tmp_path, "smolora_replay", "callbacks.smolora.r=8", "callbacks.smolora.alpha=16",
                       "callbacks.replay.size=5")
    assert run.callbacks["replay"].recalled["count_vqa"] == {"colour_mc": 5}
    assert len(run.datamodule.train_dataloader().dataset) == 32 + 5
    layers = [m for m in run.module.modules() if type(m).__name__ == "SMoLoRALinear"]
    assert layers and all(m.options.experts == 8 for m in layers)


def test_moelora_ema_averages_the_experts_and_the_router(small_config, tmp_path):
    run = composed_run(small_config, tmp_path, "moelora_ema", "callbacks.moelora.r=8", "callbacks.moelora.alpha=16")
    written = ema_wrote(run, "count_vqa")
    assert any("lora_A" in n for n in written) and any("lora_router" in n for n in written)  # experts, router


REFUSED = {
    "two pools": ("callbacks:\n  grouping: {name: instruction_grouping}\n  pool: {name: progressive_pool}\n", (),
                  r"callbacks 'grouping' and 'pool' both take charge of 'adapter_pool' \(which adapters exist.*\); "
                  r"a run has one owner of it: remove one of the two"),
    "two layer types": ("callbacks:\n  smolora: {name: smolora}\n  moelora: {name: moelora}\n", (),
                        r"'smolora' and 'moelora' both take charge of 'adapter_layer'"),
    "reader before writer": ("callbacks:\n  pool: {name: progressive_pool, allocation: dynamic}\n"
                             "  recall: {name: task_recall, mode: kl}\n  ema: {name: dynamic_ema}\n", (),
                             r"key 'callbacks.ema': it replaces the trained weights at task end, after 'recall' has "
                             r"consolidated them .*; list 'ema' before 'recall'"),
    "recall without pool": ("callbacks:\n  recall: {name: task_recall, mode: kl}\n", (),
                            r"key 'callbacks.recall': needs .* from a callback listed before it: add one that "
                            r"provides it \(progressive_pool"),
    "pool in a joint run": ("callbacks:\n  pool: {name: progressive_pool}\n", ("method.mode=joint",),
                            r"needs a sequential stream \(method.mode is 'joint'\): set method.mode=sequential or "
                            r"remove callbacks.pool"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_combinations_say_what_to_change(small_config, tmp_path, case):
    text, overrides, message = REFUSED[case]
    path = tmp_path / "method.yaml"
    path.write_text("method: {name: mine, mode: sequential}\n" + text)
    cfg, sources = small_config(*overrides, files=[path])
    with pytest.raises(ConfigError, match=rf"method\.yaml: .*{message}"):
        ContinualRun(cfg, sources).prepare()
