"""LwF (baseline, as Continual-NExT runs it): at each task's start the trainable state (adapters and the trained
projector; never the frozen or 4-bit base) is kept as the teacher; every training step adds `weight` times the
distillation term of cvit.methods.lwf (temperature `temperature`) on the current batch's answer tokens. The
teacher runs on the same model with its weights substituted (torch.func.functional_call: no second model copy, no
in-place swap under autograd): per step, one extra forward without gradients, and the teacher's copy of the
trainable weights stays on the device. The first task has no teacher."""

from __future__ import annotations

from typing import Any

import torch
from cvit.callbacks.base import ContinualCallback

from cvit.config.registry import register_callback
from cvit.methods.lwf import distillation_kl


@register_callback("lwf")
class LwF(ContinualCallback):
    sequential_only = True  # the teacher is the previous task's model

    def __init__(self, weight: float = 0.001, temperature: float = 2.0) -> None:
        """`weight` (>= 0) of the distillation term; `temperature` (> 0) of both softmaxes (Continual-NExT: 0.001,
        2)."""
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.weight, self.temperature = weight, temperature
        self.teacher: dict[str, torch.Tensor] | None = None
        self.tasks_started = 0

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        """Keep the trainable weights as they are now (after the other callbacks' task-start changes)."""
        self.teacher = None
        if self.tasks_started and trainer is not None:
            self.teacher = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
        self.tasks_started += 1

    def on_train_start(self, trainer, pl_module) -> None:
        if self.teacher is not None:  # the fit has moved the module to its device
            device = next(pl_module.parameters()).device
            self.teacher = {n: t.to(device) for n, t in self.teacher.items()}

    def training_loss(self, module, batch, outputs) -> dict[str, torch.Tensor]:
        if self.teacher is None or self.weight == 0:
            return {}
        from cvit.module import model_inputs, rank_share_of_tokens  # cvit.module imports the callbacks package

        with torch.no_grad():
            teacher = torch.func.functional_call(module.model, self.teacher, args=(), kwargs=model_inputs(batch),
                                                 strict=False)
        term = distillation_kl(outputs.logits, teacher.logits, batch["labels"], self.temperature,
                               rank_share_of_tokens(batch["labels"]))
        return {"lwf": self.weight * term}

    def state_dict(self) -> dict[str, Any]:
        """The teacher is not saved: a resumed task starts from the last stage's weights, which are its teacher."""
        return {"tasks_started": self.tasks_started}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tasks_started = state_dict.get("tasks_started", 0)
