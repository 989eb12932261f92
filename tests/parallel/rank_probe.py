"""A test-only callback for multi-process runs: after each task it saves what this rank holds (every other
callback's state_dict and the trainable weights) to `folder/rank<r>-<task>.pt`, and it can kill every rank
at an optimizer step of a task (environment variable RANK_PROBE_KILL_AT="<task>:<step>", after that step's
in-flight checkpoint), as a lost node would; from the environment, so the resumed run has the same config."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
from cvit.callbacks.base import ContinualCallback

from cvit.run.parallel import distributed


class RankProbe(ContinualCallback):
    def __init__(self, folder: str) -> None:
        self.folder, self.current = Path(folder), ""
        task, _, step = os.environ.get("RANK_PROBE_KILL_AT", "").partition(":")
        self.kill_task, self.kill_step = task, int(step or -1)

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        self.current = task.name

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.current == self.kill_task and trainer.global_step == self.kill_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_task_end(self, trainer, module, datamodule, task) -> None:
        others = [cb for cb in (trainer.callbacks if trainer is not None else []) if
                  isinstance(cb, ContinualCallback) and cb is not self]
        weights = {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save({"callbacks": {cb.config_key: cb.state_dict() for cb in others}, "weights": weights},
                   self.folder / f"rank{distributed()[0]}-{task.name}.pt")
