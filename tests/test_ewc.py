"""EWC: the Fisher and the penalty by hand, online merging, the penalty's pull in a run, resume, 4-bit, bad input."""

from __future__ import annotations

import pytest
import torch

from cvit.methods.ewc import FisherEstimate, ewc_penalty, merge_online, snapshot
from cvit.run.loop import ContinualRun
from tests.conftest import CONFIGS
from tests.test_loop import refused_before_loading, stage_events, straight_and_resumed

EWC = [CONFIGS / "method" / "ewc.yaml"]
TWO = ("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=3", "eval.unseen=false", "callbacks.ewc.batches=2")


def test_fisher_is_the_mean_squared_gradient():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    estimate = FisherEstimate()
    for grad_a, grad_b in ((torch.tensor([1.0, -2.0]), torch.tensor([3.0])), (torch.tensor([3.0, 0.0]), None)):
        a.grad, b.grad = grad_a, grad_b
        estimate.add({"a": a, "b": b})
    fisher = estimate.mean()
    assert torch.allclose(fisher["a"], torch.tensor([5.0, 2.0])) and torch.allclose(fisher["b"], torch.tensor([4.5]))


def test_penalty_and_its_gradient_by_hand():
    theta = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    first = {"fisher": {"w": torch.tensor([2.0, 1.0])}, "anchor": {"w": torch.tensor([0.0, 1.0])}}
    second = {"fisher": {"w": torch.tensor([1.0, 3.0]), "gone": torch.ones(1)},
              "anchor": {"w": torch.tensor([2.0, 2.0]), "gone": torch.zeros(1)}}
    penalty = ewc_penalty({"w": theta}, [first, second], lam=4.0)
    # 4/2 * (2*1 + 1*1 + 1*1 + 3*0) = 8; the parameter the model no longer has is skipped
    assert penalty.item() == pytest.approx(8.0)
    penalty.backward()
    # d/dtheta = lam * sum_t F_t (theta - theta*_t) = 4 * ([2, 1] + [-1, 0])
    assert torch.allclose(theta.grad, torch.tensor([4.0, 4.0]))


def test_online_fisher_decays_and_anchors_at_the_latest_weights():
    params = {"w": torch.nn.Parameter(torch.tensor([5.0]))}
    old = {"fisher": {"w": torch.tensor([2.0])}, "anchor": {"w": torch.tensor([0.0])}}
    merged = merge_online(old, snapshot({"w": torch.tensor([1.0])}, params), gamma=0.5)
    assert merged["fisher"]["w"].item() == 2.0 and merged["anchor"]["w"].item() == 5.0
    assert merge_online(None, old, 0.5) is old


def lora_state(run) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in run.module.named_parameters() if "lora_" in n}


def test_penalty_holds_the_weights_near_the_first_tasks(small_config):
    moved = {}
    for lam in (0.0, 1e7):
        cfg, sources = small_config(*TWO, f"callbacks.ewc.lam={lam}", "run.name=ewc-" + str(int(lam)), files=EWC)
        run = ContinualRun(cfg, sources)
        run_dir = run.run()
        snap = run.callbacks["ewc"].snapshots[0]
        first = snap["anchor"]
        now = {n: p.detach().float().cpu() for n, p in run.module.named_parameters() if n in first}
        # what EWC keeps small: the Fisher-weighted distance from the first task's weights
        moved[lam] = sum((snap["fisher"][n] * (now[n] - first[n]).square()).sum().item() for n in first)
        assert any("lora_" in n for n in first) and any("multi_modal_projector" in n for n in first)
        assert all(torch.all(f >= 0) for f in snap["fisher"].values())
        assert any(torch.any(f > 0) for n, f in snap["fisher"].items() if "lora_B" in n)
    events = stage_events(run_dir, "01_count_vqa")
    assert "loss/ewc" in events.Tags()["scalars"]
    assert events.Scalars("loss/ewc")[-1].value > 0
    # measured 0.43 of it; a penalty that did nothing would give exactly 1 (the two runs are otherwise identical)
    assert moved[1e7] < 0.7 * moved[0.0], moved


def test_ewc_resumes_to_the_same_matrix(small_config):
    three = ("benchmark.order=[colour_mc,count_vqa,grounding]", "train.max_steps=3", "eval.unseen=false",
             "callbacks.ewc.batches=2")
    straight, resumed = straight_and_resumed(small_config, three, EWC, "grounding")
    a, b = straight.callbacks["ewc"].snapshots, resumed.callbacks["ewc"].snapshots
    assert len(a) == len(b) == 3
    assert all(torch.equal(x["fisher"][n], y["fisher"][n]) for x, y in zip(a, b, strict=True) for n in x["fisher"])


def test_ewc_over_a_4bit_base(small_config):
    cfg, sources = small_config(*TWO, "model.quantization=nf4", "run.name=ewc-nf4", files=EWC)
    run = ContinualRun(cfg, sources)
    run.run()
    fisher = run.callbacks["ewc"].snapshots[0]["fisher"]
    assert any(torch.any(f > 0) for n, f in fisher.items() if "lora_B" in n)


@pytest.mark.parametrize("override, message", [
    ("callbacks.ewc.lam=-1.0", "lam must be >= 0"),
    ("callbacks.ewc.batches=0", "batches must be >= 1"),
    ("method.mode=joint", "needs a sequential stream"),
])
def test_bad_ewc_settings_fail_before_the_model_loads(small_config, override, message):
    refused_before_loading(small_config, EWC, override, message)
