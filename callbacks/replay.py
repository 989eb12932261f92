"""Experience replay: stored records of earlier tasks mixed into each new task's data (the baseline, and the
replay behind ProgLoRA's task recall, `callbacks/task_recall.py`).

  on_task_end    the task's training records are offered to the memory (`cvit.methods.memory.ReplayMemory`,
                 policy quota | reservoir | similarity; indices, never copies).
  on_task_start  the memory's recall for the new task joins its training data with per-sample loss weight
                 `loss_weight` (`DataModule.mix_in`); `recalled[task]` logs how many came from each earlier task.
Policy `similarity` sizes the recall by the progressive pool's task similarity (it needs that pool before it).
"""

from __future__ import annotations

from typing import Any

from cvit.callbacks.base import Capability, ContinualCallback

from cvit.config.registry import register_callback
from cvit.methods.memory import ReplayMemory


@register_callback("replay")
class ExperienceReplay(ContinualCallback):
    """`size`: records kept per task (quota, similarity) or in all (reservoir)."""

    def __init__(self, policy: str = "quota", size: int = 50, loss_weight: float = 1.0, seed: int = 0) -> None:
        if loss_weight < 0:
            raise ValueError(f"loss_weight must be >= 0, got {loss_weight}")
        self.memory = ReplayMemory(policy, size, seed)
        self.loss_weight = loss_weight
        self.recalled: dict[str, dict[str, int]] = {}  # task -> records recalled from each earlier task

    def requires(self) -> tuple[str, ...]:
        return (Capability.ALLOCATION,) if self.memory.policy == "similarity" else ()

    @property
    def buffer(self) -> dict[str, list[int]]:
        return self.memory.buffer

    def recall(self, module, task) -> dict[str, list[int]]:
        """The memory's recall for `task` (per earlier task, stream order), logged in `recalled`."""
        similarity = module.router.similarity[task.name] if self.memory.policy == "similarity" else None
        recalled = self.memory.recall(similarity)
        self.recalled[task.name] = {name: len(indices) for name, indices in recalled.items()}
        return recalled

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        for name, indices in self.recall(module, task).items():
            if indices:
                datamodule.mix_in(datamodule.tasks[name], indices, self.loss_weight)

    def on_task_end(self, trainer, module, datamodule, task) -> None:
        records = datamodule.train_records.get(task.name)
        if records is None:  # a merged stage (joint training) has nothing of its own to keep
            return
        self.memory.store(task.name, task.index, len(records))

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.state_dict(), "recalled": self.recalled}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.memory.load_state_dict(state_dict.get("memory", {}))
        self.recalled = dict(state_dict.get("recalled", {}))
