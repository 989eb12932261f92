"""O-LoRA (baseline): a new LoRA per task, the earlier ones frozen; the loss gains lambda1 times the orthogonality
of the new A's to every earlier task's (earlier A's detached) plus lambda2 times the new LoRA's L2 norms
(cvit.methods.olora; the original's lambda1 0.5, lambda2 0 as MCITlib and Prism run it). `forward: current`
(MCITlib, Prism) trains with the current LoRA alone; `all` (the original) keeps the earlier, frozen LoRAs in the
training forward. At inference every task's LoRA is summed."""

from __future__ import annotations

from typing import Any

import torch
from cvit.callbacks.base import ContinualCallback, Shared

from cvit.config.registry import register_callback
from cvit.methods.olora import l2_norms, orthogonality
from cvit.model.mixing import lora_layers
from cvit.model.pool import indexed_adapter

FORWARDS = ("current", "all")


def task_adapter(index: int) -> str:
    return indexed_adapter(index, "task")


@register_callback("olora")
class OLoRA(ContinualCallback):
    owns = (Shared.ADAPTER_POOL,)
    sequential_only = True

    def __init__(self, lambda1: float = 0.5, lambda2: float = 0.0, forward: str = "current") -> None:
        if lambda1 < 0 or lambda2 < 0:
            raise ValueError(f"lambda1 and lambda2 must be >= 0, got {lambda1}, {lambda2}")
        if forward not in FORWARDS:
            raise ValueError(f"forward must be one of {FORWARDS}, got {forward!r}")
        self.lambda1, self.lambda2, self.forward = lambda1, lambda2, forward
        self.adapters: list[str] = []

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        name = task_adapter(len(self.adapters))
        self.adapters.append(name)
        module.pool.train_only(name, active=self.adapters if self.forward == "all" else [name])

    def on_task_end(self, trainer, module, datamodule, task) -> None:
        module.pool.set_active(self.adapters)  # inference: every task's LoRA summed

    def training_loss(self, module, batch, outputs) -> dict[str, torch.Tensor]:
        current, earlier = self.adapters[-1], self.adapters[:-1]
        layers = [layer for layer in lora_layers(module.model).values() if current in layer.lora_A]
        terms = {}
        if earlier and self.lambda1 > 0:
            mine = [layer.lora_A[current].weight for layer in layers]
            theirs = [[layer.lora_A[s].weight for s in earlier if s in layer.lora_A] for layer in layers]
            terms["olora_orth"] = self.lambda1 * orthogonality(mine, theirs)
        if self.lambda2 > 0:
            matrices = [m[current].weight for layer in layers for m in (layer.lora_A, layer.lora_B)]
            terms["olora_l2"] = self.lambda2 * l2_norms(matrices)
        return terms

    def state_dict(self) -> dict[str, Any]:
        return {"adapters": self.adapters}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.adapters = list(state_dict.get("adapters", []))
