"""LLaCA's exponential moving average with dynamic weights (DESIGN §4, llaca.txt Sec. 4, App. E).

Every update (Eq. 1): theta*_t = beta_t * theta*_{t-1} + (1 - beta_t) * theta_t, one beta_t per *unit*: the
tracked tensors are split into units by an index per tensor (`start(params, units)`). The paper takes one
beta per module layer (a LoRA layer's A and B share it: `cvit.methods.ema.layer_units`); the released code one
per tensor (each tensor its own unit, the default). ||.|| is the unit's L1 norm (the sum of its tensors' L1
norms) and g the gradient the optimizer stepped with:

  paper    (Eq. 45) beta_t = 1 - ||theta_{t-1} - theta*_{t-1}|| * (1 + ||g_t||)
                                 / (||theta_t - theta*_{t-1}|| * ||g_t - g_{t-1}||),
           beta_t outside (0, 1) (or undefined) -> `fallback` (0.99, Sec. 4.3). The EMA starts equal to the
           parameters (theta*_0 = theta_0); the first step has no g_{t-1} and takes it as zero, which gives
           beta_1 = 1 and so the fallback. Eq. 45 writes the "+1" inside the norm (L'(theta) + 1, from the
           per-parameter derivation); per tensor it is read as the released code reads the same term,
           1 + ||g_t||: inside the norm it would add the tensor's element count and drive beta to the
           fallback at every step.
  released (the authors' code, peft/tuners/lora.py) alpha_t = 2 (1 + ||g_t||) / (||theta_t - theta*_{t-1}||
           * ||g_t - g_{t-1}||), alpha_t outside (0, 1) -> `released_fallback` (0.01), beta_t = 1 - alpha_t.
           The EMA is seeded from the parameters after the first step (no update at that step).
  fixed    beta_t = `beta` at every step: the "stable EMA" ablation (LLaCA Table 6).

All per-tensor work is batched with `torch._foreach_*` ops, and the betas stay on the device (no host sync).
"""

from __future__ import annotations

import torch
from torch import Tensor

FORMULAS = ("paper", "released", "fixed")


def l1_norms(tensors: list[Tensor], units: Tensor, count: int) -> Tensor:
    """[count] float32 L1 norms of the units: each tensor's L1 norm summed into its unit (`units` [n])."""
    norms = torch.stack(torch._foreach_norm(tensors, 1, dtype=torch.float32))
    return torch.zeros(count, dtype=torch.float32, device=norms.device).index_add_(0, units, norms)


def layer_units(names: list[str]) -> list[int]:
    """One unit index per parameter name: parameters of one module layer share it (a LoRA layer's A and B, every
    adapter's, are the layer `...q_proj`; any other parameter belongs to the module that holds it, e.g. a
    projector linear's weight and bias). Units are numbered in first-seen order."""
    layers = [n.rsplit(".lora_", 1)[0] if ".lora_" in n else n.rsplit(".", 1)[0] for n in names]
    index: dict[str, int] = {}
    return [index.setdefault(layer, len(index)) for layer in layers]


def inside_unit_interval(values: Tensor, fallback: float) -> tuple[Tensor, Tensor]:
    """(`values` where strictly inside (0, 1), else `fallback` (NaN and inf included); bool mask of fallbacks)."""
    inside = (values > 0) & (values < 1)
    return torch.where(inside, values, torch.full_like(values, fallback)), ~inside


def paper_betas(
    params: list[Tensor], grads: list[Tensor], ema: list[Tensor], prev_params: list[Tensor],
    prev_grads: list[Tensor] | None, fallback: float, units: Tensor, count: int,
) -> tuple[Tensor, Tensor]:
    """([count] betas of Eq. 45 per unit (see the module docstring), [count] fallback mask); `prev_grads` None
    at a task's first step."""
    lag = l1_norms(torch._foreach_sub(prev_params, ema), units, count)
    drift = l1_norms(torch._foreach_sub(params, ema), units, count)
    change = l1_norms(grads if prev_grads is None else torch._foreach_sub(grads, prev_grads), units, count)
    return inside_unit_interval(1 - lag * (1 + l1_norms(grads, units, count)) / (drift * change), fallback)


def released_betas(
    params: list[Tensor], grads: list[Tensor], ema: list[Tensor], prev_grads: list[Tensor], fallback_alpha: float,
    units: Tensor, count: int,
) -> tuple[Tensor, Tensor]:
    """([count] betas of the released code per unit, 1 - alpha with alpha = 2 (1 + ||g_t||) / (||theta_t -
    theta*|| ||g_t - g_{t-1}||), [count] fallback mask)."""
    drift = l1_norms(torch._foreach_sub(params, ema), units, count)
    change = l1_norms(torch._foreach_sub(grads, prev_grads), units, count)
    alphas, fell_back = inside_unit_interval(2 * (1 + l1_norms(grads, units, count)) / (drift * change),
                                             fallback_alpha)
    return 1 - alphas, fell_back


class DynamicEMA:
    """EMA copies of a list of tensors, updated with `step(params, grads)` after each optimizer step.

    State (all lists aligned with the tracked tensors): `ema`, `prev_params` (paper only) and `prev_grads`
    (paper and released); empty before `start` and before the released formula's seeding step. `units` [n]
    maps each tracked tensor to the unit whose beta it takes.
    """

    def __init__(
        self, formula: str = "paper", beta: float = 0.99, fallback: float = 0.99, released_fallback: float = 0.01
    ) -> None:
        if formula not in FORMULAS:
            raise ValueError(f"formula must be one of {', '.join(FORMULAS)}, got {formula!r}")
        if not 0 < beta < 1:
            raise ValueError(f"beta must be in (0, 1), got {beta}")
        self.formula, self.beta, self.fallback, self.released_fallback = formula, beta, fallback, released_fallback
        self.ema: list[Tensor] = []
        self.prev_params: list[Tensor] = []
        self.prev_grads: list[Tensor] = []
        self.units, self.unit_count = torch.zeros(0, dtype=torch.long), 0

    def start(self, params: list[Tensor], units: list[int] | None = None) -> None:
        """A new task: theta*_0 = theta_0 (paper, fixed); the released formula seeds at its first step.
        `units`: the unit of each tensor (default: one per tensor)."""
        self.set_units(units if units is not None else list(range(len(params))), params[0].device)
        self.prev_grads = []
        if self.formula == "released":
            self.ema, self.prev_params = [], []
            return
        self.ema = [p.detach().clone() for p in params]
        self.prev_params = [p.detach().clone() for p in params] if self.formula == "paper" else []

    def set_units(self, units: list[int], device: torch.device) -> None:
        self.unit_count = len(set(units))
        if sorted(set(units)) != list(range(self.unit_count)):
            raise ValueError("units must number 0..k-1, each used")
        self.units = torch.tensor(units, dtype=torch.long, device=device)

    def step(self, params: list[Tensor], grads: list[Tensor]) -> tuple[Tensor, Tensor] | None:
        """One update after an optimizer step; `params` are theta_t, `grads` g_t. Returns the [units] betas used
        and the [units] mask of those that fell back (None at the released formula's seeding step)."""
        params = [p.detach() for p in params]
        if self.formula == "released" and not self.ema:
            self.ema = [p.clone() for p in params]
            self.prev_grads = [g.clone() for g in grads]
            return None
        if self.formula == "paper":
            betas, fell_back = paper_betas(params, grads, self.ema, self.prev_params, self.prev_grads or None,
                                           self.fallback, self.units, self.unit_count)
        elif self.formula == "released":
            betas, fell_back = released_betas(params, grads, self.ema, self.prev_grads, self.released_fallback,
                                              self.units, self.unit_count)
        else:
            betas = torch.full((self.unit_count,), self.beta, device=params[0].device)
            fell_back = torch.zeros_like(betas, dtype=torch.bool)
        weights = [w.to(e.dtype) for w, e in zip((1 - betas)[self.units].unbind(), self.ema, strict=True)]
        torch._foreach_lerp_(self.ema, params, weights)
        if self.formula == "paper":
            torch._foreach_copy_(self.prev_params, params)
        if self.formula != "fixed":
            self.keep_grads(grads)
        return betas, fell_back

    def keep_grads(self, grads: list[Tensor]) -> None:
        if self.prev_grads:
            torch._foreach_copy_(self.prev_grads, grads)
        else:
            self.prev_grads = [g.detach().clone() for g in grads]

    def state(self) -> dict[str, list[Tensor]]:
        return {"ema": self.ema, "prev_params": self.prev_params, "prev_grads": self.prev_grads,
                "units": self.units.tolist()}

    def load(self, state: dict[str, list[Tensor]], device: torch.device) -> None:
        self.ema, self.prev_params, self.prev_grads = (
            [t.to(device) for t in state[key]] for key in ("ema", "prev_params", "prev_grads")
        )
        self.set_units(list(state["units"]), device)

    def clear(self) -> None:
        self.ema, self.prev_params, self.prev_grads = [], [], []
        self.units, self.unit_count = torch.zeros(0, dtype=torch.long), 0
