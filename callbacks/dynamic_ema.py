"""LLaCA's dynamic EMA (and the fixed-beta "stable EMA" ablation) of the trainable parameters.

Thin glue over `cvit.methods.ema.DynamicEMA` (formulas there). Hooks:
  on_train_start      the tensors tracked are the parameters trainable now: the adapters chosen at task start by
                      any other callback and the shared projector when it is trained (LLaCA trains "the
                      projection layer and LoRA", Sec. 5, and its released code averages every trainable
                      parameter); never a frozen or 4-bit base. `granularity: layer` (paper) gives one beta per
                      module layer (a LoRA layer's A and B share it), `tensor` (released) one per tensor. The EMA
                      starts from them, or from an in-flight checkpoint's state when the fit resumes mid-task.
                      With `skip_new_adapters` (released scripts: the EMA runs only on tasks that retrain an
                      existing group) a task whose trained adapter was created for it runs without EMA.
  on_train_batch_end  one update per optimizer step (batches that only accumulate gradients are skipped),
                      with the gradients the optimizer stepped with (after clipping); every `log_every_n_steps`
                      logs `ema/fallback_rate` (share of units whose beta fell back) and `ema/beta_dynamic_mean`
                      (mean beta of the units that did not fall back; not logged when all fell back).
  on_task_end         the EMA weights are written into the parameters: they are what is evaluated and saved.
The EMA and previous-step tensors go into in-flight checkpoints (`on_save_checkpoint`), keyed by parameter
name; `state_dict` stays small.
"""

from __future__ import annotations

from typing import Any

import torch
from cvit.callbacks.base import ContinualCallback

from cvit.config.registry import register_callback
from cvit.methods.ema import DynamicEMA, layer_units
from cvit.run.parallel import broadcast_from_zero

GRANULARITIES = ("layer", "tensor")


@register_callback("dynamic_ema")
class DynamicEMACallback(ContinualCallback):
    task_end_weights = "writes"
    whole_parameters = True

    def __init__(
        self, formula: str = "paper", granularity: str = "layer", beta: float = 0.99, fallback: float = 0.99,
        released_fallback: float = 0.01, skip_new_adapters: bool = False,
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
        self.ema = DynamicEMA(formula, beta, fallback, released_fallback)
        self.granularity, self.skip_new_adapters = granularity, skip_new_adapters
        self.names: list[str] = []
        self.params: list[torch.nn.Parameter] = []
        self.restored: dict[str, Any] | None = None
        self.known_adapters: list[str] = []  # the pool's adapters at the end of the last task
        self.skipped: list[str] = []  # tasks trained without EMA (skip_new_adapters)
        self.running = True  # the EMA runs in this task
        self.task = ""  # the running task's name

    @property
    def tensors_key(self) -> str:
        return f"{self.state_key}/tensors"

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        self.task = task.name

    def on_train_start(self, trainer, module) -> None:
        # here, not at task start: every callback's task-start hook has chosen the trainable adapters by now
        new = any(name not in self.known_adapters for name in module.pool.trainable)
        self.running = not (self.skip_new_adapters and new)
        if not self.running:
            self.restored = None  # an in-flight checkpoint of this task holds no EMA
            if self.task not in self.skipped:
                self.skipped.append(self.task)
            return
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names, self.params = [n for n, _ in named], [p for _, p in named]
        restored, self.restored = self.restored, None
        if restored is None:
            self.ema.start(self.params, layer_units(self.names) if self.granularity == "layer" else None)
            return
        if restored["names"] != self.names:
            raise RuntimeError("the in-flight checkpoint's EMA tracks other parameters than this run trains")
        self.ema.load(restored["state"], self.params[0].device)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not self.optimizer_stepped() or not self.params:  # gradients still accumulating, or no EMA
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        stepped = self.ema.step(self.params, grads)
        if stepped is not None and trainer.global_step % trainer.log_every_n_steps == 0:  # logging costs a sync
            betas, fell_back = stepped
            module.log("ema/fallback_rate", fell_back.float().mean(), batch_size=1)
            if not bool(fell_back.all()):
                module.log("ema/beta_dynamic_mean", betas[~fell_back].mean(), batch_size=1)

    def on_task_end(self, trainer, module, datamodule, task) -> None:
        if self.ema.ema:
            broadcast_from_zero(self.ema.ema)  # equal on every rank up to non-deterministic accelerator sums
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.ema.ema)
        self.ema.clear()
        self.names, self.params = [], []
        self.known_adapters = list(module.pool.names)

    def on_save_checkpoint(self, trainer, module, checkpoint: dict[str, Any]) -> None:
        checkpoint[self.tensors_key] = {"names": self.names, "state": self.ema.state()}

    def on_load_checkpoint(self, trainer, module, checkpoint: dict[str, Any]) -> None:
        self.restored = checkpoint.get(self.tensors_key)

    def state_dict(self) -> dict[str, Any]:
        return {"formula": self.ema.formula, "granularity": self.granularity, "known_adapters": self.known_adapters,
                "skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.known_adapters = list(state_dict.get("known_adapters", []))
        self.skipped = list(state_dict.get("skipped", []))
