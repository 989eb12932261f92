"""A measuring callback (append it after the method's): per training step, the bytes autograd keeps for backward,
attributed to each decoder layer (what a layer's forward saves) or to the rest of the model, the optimizer's state
bytes after the step, and the step's wall time. One JSON line a step in `out` (scripts/real_shapes.py reads it).

Saved tensors are counted once per storage (views and re-saves of one tensor are one), parameters excluded. Wall
time runs from `on_train_batch_start` to this callback's `on_train_batch_end`: the forward, the methods' extra
losses, backward, the optimizer step and the method's per-step hooks (which run before this one's)."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from cvit.callbacks.base import ContinualCallback

from cvit.data.collate import IGNORE_INDEX

OUTSIDE = "outside"


def decoder_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The language model's decoder layers (LLaMA's, Qwen2's: class names ending in DecoderLayer), in order."""
    return [child for child in module.modules() if type(child).__name__.endswith("DecoderLayer")]


class MemoryProbe(ContinualCallback):
    def __init__(self, out: str) -> None:
        self.out, self.task = Path(out), ""
        self.saved: dict[str | int, int] = defaultdict(int)
        self.storages: set[int] = set()
        self.where: str | int = OUTSIDE
        self.handles: list = []
        self.context = None
        self.started = 0.0

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        self.task = task.name

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in self.storages:
            self.storages.add(pointer)
            self.saved[self.where] += tensor.untyped_storage().nbytes()
        return tensor

    def enter(self, index: int):
        def hook(*_) -> None:
            self.where = index
        return hook

    def leave(self, *_) -> None:
        self.where = OUTSIDE

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.saved.clear()
        self.storages = {p.untyped_storage().data_ptr() for p in module.parameters()}
        self.where = OUTSIDE
        for index, layer in enumerate(decoder_layers(module)):
            self.handles += [layer.register_forward_pre_hook(self.enter(index)),
                             layer.register_forward_hook(self.leave)]
        self.context = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)
        self.context.__enter__()
        self.started = time.perf_counter()

    def stop_counting(self) -> None:
        if self.context is not None:
            self.context.__exit__(None, None, None)
            self.context = None
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def on_before_backward(self, trainer, module, loss) -> None:
        self.stop_counting()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        seconds = time.perf_counter() - self.started
        self.stop_counting()
        optimizer = sum(value.nbytes for optimizer in trainer.optimizers for state in optimizer.state.values()
                        for value in state.values() if torch.is_tensor(value) and value.dim() > 0)
        layers = sorted(key for key in self.saved if key != OUTSIDE)
        record = {
            "task": self.task, "step": trainer.global_step, "seconds": seconds,
            "batch": list(batch["input_ids"].shape), "answers": int((batch["labels"] != IGNORE_INDEX).sum()),
            "layers": [self.saved[key] for key in layers], "outside": self.saved[OUTSIDE], "optimizer": optimizer,
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with self.out.open("a") as file:
            file.write(json.dumps(record) + "\n")
