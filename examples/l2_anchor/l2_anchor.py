"""A worked example of a user's own method: an L2 anchor to the weights each task ended with.

    loss = answer loss + weight / 2 * sum_i (theta_i - theta*_i)^2

theta* = the trainable weights (adapters and the trained projector) at the end of the previous task. It is EWC
with a Fisher of ones (L2-SP). The file lives in the user's project, not in cvit: the YAML beside it names it by
`class_path: "l2_anchor:L2Anchor"`, and `cvit fit` imports it from the YAML's folder (or the current one).
"""

from __future__ import annotations

from typing import Any

import torch
from cvit.callbacks.base import ContinualCallback


class L2Anchor(ContinualCallback):
    """Arguments are the YAML entry's keys (typed: a string for a float is refused before the model loads)."""

    def __init__(self, weight: float = 0.1) -> None:
        if weight < 0:  # a ValueError here becomes a ConfigError naming the file and key
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.weight = weight
        self.anchor: dict[str, torch.Tensor] = {}  # parameter name -> theta* (CPU); saved after every task

    def on_task_end(self, trainer, module, datamodule, task) -> None:
        # after the task's fit (trainer is None in zero-shot runs); Lightning has moved the module to the CPU
        self.anchor = {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}

    def training_loss(self, module, batch, outputs) -> dict[str, torch.Tensor]:
        # inside the training step: the module is on the accelerator; the anchor follows it once
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad and n in self.anchor]
        if not named:  # the first task, or a method that trains new parameters only
            return {}
        device = named[0][1].device
        if self.anchor[named[0][0]].device != device:
            self.anchor = {n: t.to(device) for n, t in self.anchor.items()}
        penalty = sum((p - self.anchor[n]).pow(2).sum() for n, p in named)
        return {"l2_anchor": self.weight / 2 * penalty}  # logged as loss/l2_anchor

    def state_dict(self) -> dict[str, Any]:
        # reloaded with torch.load(weights_only=True): tensors, numbers, strings, lists and dicts only
        return {"anchor": {n: t.cpu() for n, t in self.anchor.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.anchor = dict(state_dict["anchor"])
