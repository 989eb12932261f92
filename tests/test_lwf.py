"""LwF: the distillation term by hand, the teacher (trainable weights only, frozen, the task's start), resume,
4-bit, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cvit.methods.lwf import distillation_kl
from cvit.run.loop import ContinualRun
from tests.conftest import CONFIGS
from tests.test_loop import refused_before_loading, stage_events, straight_and_resumed, wrap_prepare

LWF = [CONFIGS / "method" / "lwf.yaml"]
TWO = ("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=3", "eval.unseen=false", "callbacks.lwf.weight=1.0")


def test_distillation_kl_by_hand():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, -100, 3, 1], [-100, 2, -100, -100]])  # positions 1, 2 of row 0 and 0 of row 1
    got = distillation_kl(student, teacher, labels, temperature=2.0)
    terms = []
    for row, pos in ((0, 1), (0, 2), (1, 0)):
        p = F.softmax(teacher[row, pos] / 2, -1)
        q = F.softmax(student[row, pos] / 2, -1)
        terms.append((p * (p.log() - q.log())).sum())
    assert got.item() == pytest.approx(4 * torch.stack(terms).mean().item(), rel=1e-5)
    assert distillation_kl(teacher, teacher, labels, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_teacher_is_the_trainable_state_at_task_start_and_stays_frozen(small_config):
    from cvit.callbacks.base import ContinualCallback

    class Probe(ContinualCallback):
        def __init__(self, run) -> None:
            self.run, self.start, self.end = run, None, None

        @property
        def lwf(self):
            return self.run.callbacks["lwf"]

        def on_train_start(self, trainer, pl_module) -> None:
            if self.lwf.teacher is not None:
                self.start = {n: t.clone() for n, t in self.lwf.teacher.items()}
                self.trained_start = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()
                                      if p.requires_grad}

        def on_train_end(self, trainer, pl_module) -> None:
            if self.lwf.teacher is not None:
                self.end = self.lwf.teacher
                self.trained_end = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()
                                    if p.requires_grad}

    cfg, sources = small_config(*TWO, "run.name=lwf", files=LWF)
    run = ContinualRun(cfg, sources)
    cb = Probe(run)
    run.prepare = wrap_prepare(run, cb, key="probe")
    run_dir = run.run()
    names = set(cb.start)
    assert names and all(".lora_" in n or "multi_modal_projector" in n for n in names)  # never the base
    assert not any(t.requires_grad for t in cb.end.values())
    assert all(torch.equal(cb.start[n], cb.end[n]) for n in names)  # unchanged while the student trains
    assert all(torch.equal(cb.start[n], cb.trained_start[n]) for n in names)  # the task's starting weights
    assert any(not torch.equal(cb.trained_end[n], cb.end[n]) for n in names)  # the student moved away
    events = stage_events(run_dir, "01_count_vqa")
    assert events.Scalars("loss/lwf")[-1].value > 0
    assert "loss/lwf" not in stage_events(run_dir, "00_colour_mc").Tags()["scalars"]


def test_lwf_resumes_to_the_same_matrix(small_config):
    three = ("benchmark.order=[colour_mc,count_vqa,grounding]", "train.max_steps=3", "eval.unseen=false",
             "callbacks.lwf.weight=1.0")
    straight_and_resumed(small_config, three, LWF, "grounding")


def test_lwf_over_a_4bit_base(small_config):
    cfg, sources = small_config(*TWO, "model.quantization=nf4", "run.name=lwf-nf4", files=LWF)
    run_dir = ContinualRun(cfg, sources).run()
    events = stage_events(run_dir, "01_count_vqa")
    assert events.Scalars("loss/lwf")[-1].value > 0


@pytest.mark.parametrize("override, message", [
    ("callbacks.lwf.temperature=0.0", "temperature must be > 0"),
    ("callbacks.lwf.weight=-1.0", "weight must be >= 0"),
    ("method.mode=joint", "needs a sequential stream"),
])
def test_bad_lwf_settings_fail_before_the_model_loads(small_config, override, message):
    refused_before_loading(small_config, LWF, override, message)
