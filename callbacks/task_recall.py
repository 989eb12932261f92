"""ProgLoRA's task recall (proglora.txt Sec. 4.2-4.3, Eq. 8-9): a small, similarity-sized memory of earlier tasks.

  on_task_end    keeps `phi` seeded record indices of the task (references into its training data, never
                 copies); with `mode: kl` also the allocation the pool's router gives them now (w_p^d).
  on_task_start  per earlier task p, n_p samples are recalled: (1 - w_{p,i}) phi with `counts: similarity`
                 (w from the progressive pool's router), phi with `random` (Table 3's random recall), none
                 with `none`. `mode: replay` (ProgLoRA static) mixes them into the task's training data with
                 loss weight `loss_weight` (lambda); `mode: kl` (dynamic) adds lambda * KL(recorded || now) of
                 their allocation to every training step (`cvit.methods.allocation.recall_kl`), without an LLM
                 forward on them, summed over the samples as Eq. 8 writes it (`reduction: sum`) or averaged
                 (`mean`).
With `counts: random` or `none` and `mode: replay` it is plain experience replay and needs no pool.
"""

from __future__ import annotations

from typing import Any

import torch
from cvit.callbacks.base import ContinualCallback

from cvit.methods.allocation import KL_REDUCTIONS, recall_counts, recall_kl
from cvit.registry import register_callback


@register_callback("task_recall")
class TaskRecall(ContinualCallback):
    task_end_weights = "reads"
    sequential_only = True

    def __init__(self, mode: str = "replay", counts: str = "similarity", phi: int = 200, loss_weight: float = 2.0,
                 reduction: str = "sum", seed: int = 0) -> None:
        if mode not in ("replay", "kl"):
            raise ValueError(f"mode must be replay or kl, got {mode!r}")
        if counts not in ("similarity", "random", "none"):
            raise ValueError(f"counts must be similarity, random or none, got {counts!r}")
        if phi < 0:
            raise ValueError("phi must be >= 0")
        if reduction not in KL_REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(KL_REDUCTIONS)}, got {reduction!r}")
        self.reduction = reduction
        self.mode, self.counts, self.phi, self.loss_weight, self.seed = mode, counts, phi, loss_weight, seed
        self.buffer: dict[str, list[int]] = {}  # task -> phi record indices
        self.recorded: dict[str, torch.Tensor] = {}  # task -> [phi, blocks then] allocation (mode kl)
        self.recalled: dict[str, dict[str, int]] = {}  # task -> samples recalled from each earlier task
        self.recall_pooled: torch.Tensor | None = None  # [N, d] x_max of this task's recalled samples (kl)
        self.recall_targets: torch.Tensor | None = None  # [N, m] their recorded allocations (kl)

    def requires(self) -> tuple[str, ...]:
        needs = ("allocation",) if self.counts == "similarity" else ()
        return needs + (("dynamic_allocation",) if self.mode == "kl" else ())

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        earlier = list(self.buffer)
        weights = module.router.similarity[task.name] if self.counts == "similarity" else [0.0] * len(earlier)
        counts = dict(zip(earlier, recall_counts(weights, self.phi, self.counts), strict=True))
        self.recalled[task.name] = counts
        self.recall_pooled = self.recall_targets = None
        if self.mode == "replay":
            for name, count in counts.items():
                if count:
                    datamodule.mix_in(datamodule.tasks[name], self.buffer[name][:count], self.loss_weight)
            return
        chosen = [(name, count) for name, count in counts.items() if count]
        if chosen:
            texts = [text for name, count in chosen for text in self.instructions(datamodule, name, count)]
            blocks = len(module.router.tasks)  # recorded allocations zero-padded to the blocks in the pool now
            with torch.no_grad():
                self.recall_pooled = module.router.pooled(texts)
            self.recall_targets = torch.cat([
                torch.nn.functional.pad(self.recorded[name][:count], (0, blocks - self.recorded[name].shape[1]))
                for name, count in chosen
            ]).to(self.recall_pooled.device)

    def instructions(self, datamodule, name: str, count: int | None = None) -> list[str]:
        """The instruction texts of the first `count` (default: all) of the task's buffered records."""
        return datamodule.instructions(datamodule.tasks[name], self.buffer[name][:count])

    def training_loss(self, module, batch, outputs) -> dict[str, torch.Tensor]:
        if self.recall_pooled is None:
            return {}
        device = next(module.pool.extras.parameters()).device  # fits move the module after task start
        self.recall_pooled, self.recall_targets = self.recall_pooled.to(device), self.recall_targets.to(device)
        current = module.router.allocate(self.recall_pooled)
        return {"recall_kl": self.loss_weight * recall_kl(current, self.recall_targets, self.reduction)}

    def on_task_end(self, trainer, module, datamodule, task) -> None:
        size = len(datamodule.train_records[task.name])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + task.index)
        self.buffer[task.name] = torch.randperm(size, generator=generator)[: self.phi].tolist()
        if self.mode == "kl":
            with torch.no_grad():
                pooled = module.router.pooled(self.instructions(datamodule, task.name))
                self.recorded[task.name] = module.router.allocate(pooled).cpu()
        self.recall_pooled = self.recall_targets = None

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer, "recorded": self.recorded, "recalled": self.recalled}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer = {k: list(v) for k, v in state_dict.get("buffer", {}).items()}
        self.recorded = dict(state_dict.get("recorded", {}))
        self.recalled = dict(state_dict.get("recalled", {}))
