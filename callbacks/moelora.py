"""MoELoRA (baseline, CoIN's): one MoELoRA adapter (cvit.model.moelora) on every targeted linear, trained through the
whole stream, nothing frozen across tasks; the shared projector trains beside it. CoIN's setting: r 128 over 8
experts (rank 16 each), alpha 256, all the language model's linears, no balancing loss; MCITlib's UCIT: r 18, 6
experts. `balance` > 0 adds that weight times the mean over layers of Switch Transformer's load-balancing loss."""

from __future__ import annotations

import torch
from cvit.callbacks.base import ContinualCallback, Shared

from cvit.config.registry import register_callback
from cvit.config.schema import LANGUAGE_MODEL_LINEARS
from cvit.model.moelora import MoELoRAOptions, MoELoRAType, load_balance, moelora_layers


@register_callback("moelora")
class MoELoRA(ContinualCallback):
    owns = (Shared.ADAPTER_LAYER,)

    def __init__(self, experts: int = 8, r: int = 128, alpha: int = 256, target_modules: str = LANGUAGE_MODEL_LINEARS,
                 balance: float = 0.0) -> None:
        if balance < 0:
            raise ValueError(f"balance must be >= 0, got {balance}")
        self.layer = MoELoRAType(MoELoRAOptions(experts), r, alpha, target_modules)  # checks r % experts
        self.balance = balance
        self.layers: list = []  # the layers collecting router probabilities (balance > 0)

    def adapter_layer(self) -> MoELoRAType:
        return self.layer

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        # found once per task, not walked at every step (peft adds later adapters to the same layer objects)
        self.layers = list(moelora_layers(module.model).values()) if self.balance > 0 else []
        for layer in self.layers:
            layer.balance_probs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for layer in self.layers:  # drop what a checkpoint recomputation appended
            layer.balance_probs.clear()

    def training_loss(self, module, batch, outputs) -> dict[str, torch.Tensor]:
        terms = [load_balance(torch.cat(layer.balance_probs)) for layer in self.layers if layer.balance_probs]
        return {"moe_balance": self.balance * torch.stack(terms).mean()} if terms else {}
