"""Learning without forgetting: distillation from the model as it was at the task's start.

    T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the answer tokens

with logits [B, L, V] predicting the next token (position t scores label t + 1, as the answer loss) and labels
[B, L] (IGNORE_INDEX off the answer). Only the answer positions are cast to float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cvit.data.collate import IGNORE_INDEX


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                    temperature: float, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar: T^2 times the mean over answer tokens of KL(teacher || student) at temperature T; `tokens`: the
    mean's denominator, as `cvit.module.answer_loss` takes it."""
    mask = labels[:, 1:] != IGNORE_INDEX
    s = student[:, :-1][mask].float() / temperature
    t = teacher[:, :-1][mask].float() / temperature
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="sum")
    return temperature ** 2 * kl / (mask.sum().clamp(min=1) if tokens is None else tokens)
