"""EWC (baseline): at each task's end the empirical Fisher of the trainable parameters (squared gradients of the
answer loss over `batches` batches of the task's own records, in order, dropout off) and the trained weights are
kept; later tasks add lambda/2 sum_t F_t (theta - theta*_t)^2 (cvit.methods.ewc). Prism's defaults: lambda 5000,
50 batches, one Fisher per task; `online: true` keeps one decayed Fisher (gamma) anchored at the latest weights.
The Fisher and anchors are the callback's state, saved with every stage (and in in-flight checkpoints)."""

from __future__ import annotations

from typing import Any

import torch
from cvit.callbacks.base import ContinualCallback

from cvit.config.registry import register_callback
from cvit.data.collate import IGNORE_INDEX
from cvit.methods.ewc import FisherEstimate, Snapshot, ewc_penalty, merge_online, snapshot
from cvit.model.encoders import to_accelerator
from cvit.run.parallel import distributed, mean_over_ranks


def trainable(module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


@register_callback("ewc")
class EWC(ContinualCallback):
    sequential_only = True  # a Fisher per task: joint and zero-shot runs have no earlier task to protect

    def __init__(self, lam: float = 5000.0, batches: int = 50, online: bool = False, gamma: float = 1.0) -> None:
        """`lam`: the penalty's lambda (>= 0); `batches`: training batches the Fisher averages over; `gamma`: the
        online Fisher's decay, in [0, 1]."""
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if batches < 1:
            raise ValueError(f"batches must be >= 1, got {batches}")
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.lam, self.batches, self.online, self.gamma = lam, batches, online, gamma
        self.snapshots: list[Snapshot] = []
        self.on_device: tuple[torch.device, list[Snapshot]] | None = None

    @torch.enable_grad()
    def fisher(self, trainer, module, datamodule, task) -> dict[str, torch.Tensor]:
        """The empirical Fisher of the trainable parameters on the task's first `batches` training batches (global
        batches under data parallelism: each rank takes its part of a batch and the gradients are averaged before
        they are squared, as one process at the global batch would)."""
        from cvit.module import answer_loss, model_inputs, rank_share_of_tokens  # cvit.module imports this package

        params = trainable(module)
        if not params:
            raise ValueError("EWC: the model has no trainable parameters")
        train_set, (rank, world) = datamodule.train_set(task), distributed()
        estimate, was_training = FisherEstimate(), module.training
        module.eval()
        try:
            for start in range(0, min(len(train_set), self.batches * datamodule.batch_size * world),
                               datamodule.batch_size * world):
                mine = range(start + rank * datamodule.batch_size, start + (rank + 1) * datamodule.batch_size)
                mine = [i for i in mine if i < len(train_set)]
                module.zero_grad(set_to_none=False)
                if mine:  # the last global batch may leave a rank nothing
                    batch = datamodule.collator.train_batch([train_set[i] for i in mine])
                    batch = module.transfer_batch_to_device(batch, module.device, 0)
                    with module.router.training(batch):
                        with trainer.precision_plugin.forward_context():
                            out = module.model(**model_inputs(batch))
                        tokens = rank_share_of_tokens(batch["labels"])
                        answer_loss(out.logits, batch["labels"], batch["loss_weight"], tokens).backward()
                else:
                    rank_share_of_tokens(torch.full((1, 1), IGNORE_INDEX, device=module.device))  # a share of 0 tokens
                for param in params.values():
                    if param.grad is None:
                        param.grad = torch.zeros_like(param)
                mean_over_ranks([param.grad for param in params.values()])
                estimate.add(params)
        finally:
            module.zero_grad(set_to_none=True)
            module.train(was_training)
        return estimate.mean()

    def on_task_end(self, trainer, module, datamodule, task) -> None:
        if trainer is None:
            return
        to_accelerator(module, trainer)
        new = snapshot(self.fisher(trainer, module, datamodule, task), trainable(module))
        if self.online:
            self.snapshots = [merge_online(self.snapshots[0] if self.snapshots else None, new, self.gamma)]
        else:
            self.snapshots.append(new)
        self.on_device = None

    def device_snapshots(self, device: torch.device) -> list[Snapshot]:
        """The snapshots on `device`, moved once (not at every step)."""
        if self.on_device is None or self.on_device[0] != device:
            moved = [{part: {n: t.to(device) for n, t in values.items()} for part, values in snap.items()}
                     for snap in self.snapshots]
            self.on_device = (device, moved)
        return self.on_device[1]

    def training_loss(self, module, batch, outputs) -> dict[str, torch.Tensor]:
        if not self.snapshots or self.lam == 0:
            return {}
        params = trainable(module)
        device = next(iter(params.values())).device
        return {"ewc": ewc_penalty(params, self.device_snapshots(device), self.lam)}

    def state_dict(self) -> dict[str, Any]:
        return {"snapshots": self.snapshots}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.snapshots = list(state_dict.get("snapshots", []))
        self.on_device = None
