"""Elastic weight consolidation on the trainable parameters (the baseline as Prism / MCITlib run it on LoRA).

After task t: the empirical Fisher F_t = mean over the task's batches of the squared gradient of the answer loss,
per parameter, and the anchor theta*_t (the trained weights). During later tasks the loss gains

    lambda / 2 * sum over stored tasks t of sum_i F_t,i (theta_i - theta*_t,i)^2

over the parameters that each stored task has (by name). `online`: one Fisher, gamma F_old + F_new, anchored at the
latest weights, instead of one per task (Schwarz et al.'s online EWC).
"""

from __future__ import annotations

import torch

Snapshot = dict[str, dict[str, torch.Tensor]]  # {"fisher": {name: F}, "anchor": {name: theta*}}


class FisherEstimate:
    """Accumulates squared gradients per parameter over batches; `mean()` is the empirical Fisher."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.batches = 0

    def add(self, params: dict[str, torch.nn.Parameter]) -> None:
        """Add one batch's squared gradients (parameters without a gradient count as 0)."""
        for name, param in params.items():
            square = torch.zeros_like(param, dtype=torch.float32) if param.grad is None else param.grad.float() ** 2
            self.sums[name] = self.sums.get(name, 0) + square.detach().cpu()
        self.batches += 1

    def mean(self) -> dict[str, torch.Tensor]:
        if not self.batches:
            raise ValueError("the Fisher needs at least one batch")
        return {name: total / self.batches for name, total in self.sums.items()}


def snapshot(fisher: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter]) -> Snapshot:
    return {"fisher": fisher, "anchor": {name: params[name].detach().float().cpu().clone() for name in fisher}}


def merge_online(previous: Snapshot | None, new: Snapshot, gamma: float) -> Snapshot:
    """Online EWC: Fisher gamma F_prev + F_new (per name), anchored at the new weights."""
    if previous is None:
        return new
    fisher = {name: gamma * previous["fisher"].get(name, 0) + f for name, f in new["fisher"].items()}
    return {"fisher": fisher, "anchor": new["anchor"]}


def ewc_penalty(params: dict[str, torch.nn.Parameter], snapshots: list[Snapshot], lam: float) -> torch.Tensor:
    """lambda / 2 * sum_t sum_i F_t,i (theta_i - theta*_t,i)^2 over the names each snapshot holds and `params` has
    (a scalar on the parameters' device, differentiable in `params`)."""
    device = next(iter(params.values())).device
    total = torch.zeros((), device=device)
    for snap in snapshots:
        for name, fisher in snap["fisher"].items():
            if name in params:
                theta = params[name]
                diff = theta.float() - snap["anchor"][name].to(theta.device)
                total = total + (fisher.to(theta.device) * diff.square()).sum()
    return lam / 2 * total
