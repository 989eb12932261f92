"""O-LoRA's losses (Wang et al., orthogonal subspace learning): per LoRA layer, the current task's A_t [r, in]
against every earlier task's A_s (detached)

    orthogonality = sum over layers and s < t of sum_ij |(A_t A_s^T)_ij|

and the L2 term sum over the current adapter's LoRA matrices of ||M||_2 (the Frobenius norm, as torch.norm)."""

from __future__ import annotations

import torch


def orthogonality(current: list[torch.Tensor], earlier: list[list[torch.Tensor]]) -> torch.Tensor:
    """`current[l]`: the current A of layer l; `earlier[l]`: that layer's earlier A's. Scalar, differentiable in
    `current` only."""
    total = current[0].new_zeros((), dtype=torch.float32)
    for a_t, previous in zip(current, earlier, strict=True):
        for a_s in previous:
            total = total + (a_t.float() @ a_s.detach().float().T).abs().sum()
    return total


def l2_norms(matrices: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([m.float().norm(p=2) for m in matrices]).sum()
