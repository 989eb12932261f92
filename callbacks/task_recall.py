"""ProgLoRA's task recall (proglora.txt Sec. 4.2-4.3, Eq. 8-9): a small, similarity-sized memory of earlier tasks,
the replay mechanism of `callbacks/replay.py` under ProgLoRA's names.

  on_task_end    keeps `phi` seeded record indices of the task (references into its training data, never
                 copies); with `mode: kl` also the allocation the pool's router gives them now (w_p^d).
  on_task_start  per earlier task p, n_p samples are recalled: (1 - w_{p,i}) phi with `counts: similarity`
                 (w from the progressive pool's router; memory policy similarity), phi with `random` (Table 3's
                 random recall; policy quota), none with `none`. `mode: replay` (ProgLoRA static) mixes them
                 into the task's training data with loss weight `loss_weight` (lambda); `mode: kl` (dynamic)
                 adds lambda * KL(recorded || now) of their allocation to every training step
                 (`cvit.methods.allocation.recall_kl`), without an LLM forward on them, summed over the samples
                 as Eq. 8 writes it (`reduction: sum`) or averaged (`mean`).
With `counts: random` or `none` and `mode: replay` it is plain experience replay and needs no pool.
"""

from __future__ import annotations

from typing import Any

import torch
from cvit.callbacks.base import Capability
from cvit.callbacks.replay import ExperienceReplay

from cvit.config.registry import register_callback
from cvit.methods.allocation import KL_REDUCTIONS, recall_kl

COUNT_POLICIES = {"similarity": "similarity", "random": "quota", "none": "quota"}  # counts -> memory policy


@register_callback("task_recall")
class TaskRecall(ExperienceReplay):
    task_end_weights = "reads"
    sequential_only = True

    def __init__(self, mode: str = "replay", counts: str = "similarity", phi: int = 200, loss_weight: float = 2.0,
                 reduction: str = "sum", seed: int = 0) -> None:
        if mode not in ("replay", "kl"):
            raise ValueError(f"mode must be replay or kl, got {mode!r}")
        if counts not in COUNT_POLICIES:
            raise ValueError(f"counts must be {', '.join(COUNT_POLICIES)}, got {counts!r}")
        if phi < 0:
            raise ValueError("phi must be >= 0")
        if reduction not in KL_REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(KL_REDUCTIONS)}, got {reduction!r}")
        super().__init__(COUNT_POLICIES[counts], 0 if counts == "none" else phi, loss_weight, seed)
        self.mode, self.reduction = mode, reduction
        self.recorded: dict[str, torch.Tensor] = {}  # task -> [phi, blocks then] allocation (mode kl)
        self.recall_pooled: torch.Tensor | None = None  # [N, d] x_max of this task's recalled samples (kl)
        self.recall_targets: torch.Tensor | None = None  # [N, m] their recorded allocations (kl)

    def requires(self) -> tuple[str, ...]:
        return super().requires() + ((Capability.DYNAMIC_ALLOCATION,) if self.mode == "kl" else ())

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        self.recall_pooled = self.recall_targets = None
        if self.mode == "replay":
            super().on_task_start(trainer, module, datamodule, task)
            return
        chosen = {name: indices for name, indices in self.recall(module, task).items() if indices}
        if chosen:
            blocks = len(module.router.tasks)  # recorded allocations zero-padded to the blocks in the pool now
            with torch.no_grad():
                self.recall_pooled = torch.cat([module.router.pooled_records(datamodule, datamodule.tasks[name],
                                                                             indices)
                                                for name, indices in chosen.items()])
            self.recall_targets = torch.cat([
                torch.nn.functional.pad(self.recorded[name][: len(indices)],
                                        (0, blocks - self.recorded[name].shape[1]))
                for name, indices in chosen.items()
            ]).to(self.recall_pooled.device)

    def training_loss(self, module, batch, outputs) -> dict[str, torch.Tensor]:
        if self.recall_pooled is None:
            return {}
        device = next(module.pool.extras.parameters()).device  # fits move the module after task start
        self.recall_pooled, self.recall_targets = self.recall_pooled.to(device), self.recall_targets.to(device)
        current = module.router.allocate(self.recall_pooled)
        return {"recall_kl": self.loss_weight * recall_kl(current, self.recall_targets, self.reduction)}

    def on_task_end(self, trainer, module, datamodule, task) -> None:
        super().on_task_end(trainer, module, datamodule, task)
        if self.mode == "kl":
            kept = self.buffer[task.name]  # draw order: similarity recall takes a prefix of it
            with torch.no_grad():
                pooled = module.router.pooled_records(datamodule, datamodule.tasks[task.name], list(kept))
                self.recorded[task.name] = module.router.allocate(pooled).cpu()
        self.recall_pooled = self.recall_targets = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "recorded": self.recorded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.recorded = dict(state_dict.get("recorded", {}))
