"""O-LoRA: the orthogonality and L2 terms by hand, one frozen LoRA per task, forward current/all, resume, 4-bit,
bad input."""

from __future__ import annotations

import pytest
import torch
from cvit.callbacks.base import ContinualCallback

from cvit.methods.olora import l2_norms, orthogonality
from cvit.model.mixing import lora_layers
from cvit.run.loop import ContinualRun
from tests.conftest import CONFIGS
from tests.test_loop import refused_before_loading, stage_events, straight_and_resumed, wrap_prepare

OLORA = [CONFIGS / "method" / "olora.yaml"]
THREE = ("benchmark.order=[colour_mc,count_vqa,grounding]", "train.max_steps=3", "eval.unseen=false")


def test_orthogonality_and_l2_by_hand():
    a_t = torch.tensor([[1.0, -2.0], [0.0, 1.0]], requires_grad=True)
    a_s = torch.tensor([[3.0, 1.0]], requires_grad=True)
    # A_t A_s^T = [[1*3 - 2*1], [0*3 + 1*1]] = [[1], [1]] -> |.| summed = 2; two layers, the second without earlier A
    got = orthogonality([a_t, a_t], [[a_s], []])
    assert got.item() == pytest.approx(2.0)
    got.backward()
    assert a_s.grad is None and torch.allclose(a_t.grad, torch.tensor([[3.0, 1.0], [3.0, 1.0]]))
    assert l2_norms([torch.tensor([3.0, 4.0]), torch.tensor([[1.0]])]).item() == pytest.approx(6.0)


class ActiveProbe(ContinualCallback):
    """Records the adapters active in each task's training forward."""

    def __init__(self) -> None:
        self.active: list[list[str]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.active.append(list(pl_module.pool.active))


@pytest.mark.parametrize("forward", ["current", "all"])
def test_one_lora_per_task_earlier_frozen_all_summed_at_inference(small_config, forward):
    cfg, sources = small_config(*THREE, f"callbacks.olora.forward={forward}", f"run.name=olora-{forward}",
                                files=OLORA)
    run = ContinualRun(cfg, sources)
    probe = ActiveProbe()
    run.prepare = wrap_prepare(run, probe, key="probe")
    run_dir = run.run()
    pool = run.module.pool
    assert pool.names == ["default", "task1", "task2"] and pool.active == ["default", "task1", "task2"]
    expected = [["default"], ["task1"], ["task2"]] if forward == "current" else \
        [["default"], ["default", "task1"], ["default", "task1", "task2"]]
    assert probe.active == expected
    events = stage_events(run_dir, "02_grounding")
    assert events.Scalars("loss/olora_orth")[-1].value > 0
    layer = next(iter(lora_layers(run.module.model).values()))
    assert not layer.lora_A["default"].weight.requires_grad and not layer.lora_A["task1"].weight.requires_grad


def test_earlier_loras_stay_unchanged(small_config):
    from safetensors.torch import load_file

    cfg, sources = small_config(*THREE, "run.name=olora-frozen", files=OLORA)
    run_dir = ContinualRun(cfg, sources).run()
    weights = [load_file(run_dir / "stages" / stage / "adapters" / "default" / "adapter_model.safetensors")
               for stage in ("00_colour_mc", "02_grounding")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_olora_resumes_to_the_same_matrix(small_config):
    straight_and_resumed(small_config, THREE, OLORA, "grounding")


def test_olora_over_a_4bit_base(small_config):
    cfg, sources = small_config("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=2", "eval.unseen=false",
                                "model.quantization=nf4", "run.name=olora-nf4", files=OLORA)
    run_dir = ContinualRun(cfg, sources).run()
    events = stage_events(run_dir, "01_count_vqa")
    assert events.Scalars("loss/olora_orth")[-1].value > 0


@pytest.mark.parametrize("override, message", [
    ("callbacks.olora.lambda1=-0.5", "must be >= 0"),
    ("callbacks.olora.forward=some", "forward must be one of"),
    ("method.mode=joint", "needs a sequential stream"),
])
def test_bad_olora_settings_fail_before_the_model_loads(small_config, override, message):
    refused_before_loading(small_config, OLORA, override, message)
