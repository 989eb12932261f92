"""Experience replay (baseline): mix stored samples of earlier tasks into each new task's data."""

from __future__ import annotations

import random
from typing import Any

from cvit.callbacks.base import ContinualCallback

from cvit.registry import register_callback


@register_callback("replay")
class ExperienceReplay(ContinualCallback):
    """Keeps `samples_per_task` training records of each finished task (indices, not copies) and
    mixes them, with `loss_weight`, into every later task's training data (DataModule.mix_in)."""

    def __init__(self, samples_per_task: int = 50, loss_weight: float = 1.0, seed: int = 0) -> None:
        if samples_per_task < 0:
            raise ValueError("samples_per_task must be >= 0")
        self.samples_per_task, self.loss_weight, self.seed = samples_per_task, loss_weight, seed
        self.buffer: dict[str, list[int]] = {}

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        for name, indices in self.buffer.items():
            datamodule.mix_in(datamodule.tasks[name], indices, self.loss_weight)

    def on_task_end(self, trainer, module, datamodule, task) -> None:
        records = datamodule.train_records.get(task.name)
        if records is None:  # a merged stage (joint training) has nothing of its own to keep
            return
        rng = random.Random(f"{self.seed}/{task.name}")
        count = min(self.samples_per_task, len(records))
        self.buffer[task.name] = sorted(rng.sample(range(len(records)), count))

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer = {k: list(v) for k, v in state_dict.get("buffer", {}).items()}
