"""ProgLoRA's task-aware allocation and recall arithmetic (proglora.txt Sec. 4.2-4.3, Eq. 3 and 5-8).

Static (Eq. 3): the fused block of task i is BLK_i + sum_{p<i} w_{p,i} BLK_p (a weighted sum of the blocks'
outputs, see `callbacks/progressive_pool.py`) with
    w_{p,i} = cos(e^v_p, e^v_i) * cos(e^q_p, e^q_i) * cos(e^a_p, e^a_i),
e = a task's mean image / instruction / answer embedding. The product is clamped to [0, 1] (the paper
states no range; the recall count (1 - w) phi needs w <= 1, and a negative weight would subtract a block).
Dynamic (Eq. 5-7): h = LN(W2 SiLU(W1 x_max + b1) + b2), w_n = softmax_n(h . key_n / T), x_max the
max-pool over the instruction's token embeddings (the layers before the LoRA pool: the input embeddings).
The released code (Yahan-Yu/proglora_codebase, `llava_llama.py`) differs, offered as form `released`:
h = LN(SiLU(W2 W1 x_max)) with both linears bias-free, x_max the max over every position of the multimodal
input (the input embeddings with the image features spliced in; in training the answer's tokens too). Not
copied from it, and documented here as defects: it shifts the earlier blocks' logits and the current block's
logits each by their own maximum over the whole batch before one softmax, so at its evaluation batch of 1 the
current block's logit is always 0 and, with two blocks, the weights are always [0.5, 0.5] whatever the input; it
recomputes the weights at every decoding step from the newest token's embedding alone; its max-pool runs over the
zero padding too; its Xavier initialisation of the projector never runs (the check is on the Sequential).
Recall (Eq. 8): KL between the allocation recorded when an earlier sample was learned (zero-padded to the
blocks now in the pool) and its allocation now.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MODALITIES = ("image", "instruction", "answer")


def similarity_weight(earlier: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> float:
    """w_{p,i}: the product over modalities of the cosine similarity of two tasks' mean embeddings, in [0, 1]."""
    product = 1.0
    for modality in MODALITIES:
        product *= float(F.cosine_similarity(earlier[modality], current[modality], dim=0))
    return min(1.0, max(0.0, product))


def max_pool(embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, d] token embeddings max-pooled over the tokens where the [B, L] mask is set -> [B, d]."""
    floor = torch.finfo(embeddings.dtype).min
    return embeddings.masked_fill(~mask.bool().unsqueeze(-1), floor).amax(1)


ALLOCATOR_FORMS = ("paper", "released")


def allocation_projector(dim: int, projector_dim: int, form: str) -> nn.Sequential:
    """Eq. 5's projector `paper`: LN(W2 SiLU(W1 x + b1) + b2); `released`: LN(SiLU(W2 W1 x)), no biases."""
    if form == "paper":
        return nn.Sequential(nn.Linear(dim, projector_dim), nn.SiLU(), nn.Linear(projector_dim, dim), nn.LayerNorm(dim))
    if form == "released":
        return nn.Sequential(nn.Linear(dim, projector_dim, bias=False), nn.Linear(projector_dim, dim, bias=False),
                             nn.SiLU(), nn.LayerNorm(dim))
    raise ValueError(f"allocator must be one of {', '.join(ALLOCATOR_FORMS)}, got {form!r}")


class DynamicAllocator(nn.Module):
    """The projector of Eq. 5 (`form`: see `allocation_projector`) and one key per LoRA block; `forward(x_max)`
    gives Eq. 6's [B, n] weights."""

    def __init__(self, dim: int, projector_dim: int = 100, temperature: float = 0.0, form: str = "paper") -> None:
        super().__init__()
        self.projector = allocation_projector(dim, projector_dim, form)
        self.keys = nn.ParameterList()
        self.temperature = temperature or math.sqrt(dim)  # 0: sqrt(d_in), as the released code divides by

    def add_key(self) -> nn.Parameter:
        """A new block's key (trainable; the caller freezes earlier ones)."""
        first = self.projector[0].weight
        key = nn.Parameter(torch.randn(first.shape[1], device=first.device) / math.sqrt(first.shape[1]))
        self.keys.append(key)
        return key

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        h = self.projector(pooled.to(self.projector[0].weight.dtype))
        logits = h @ torch.stack(list(self.keys)).T / self.temperature
        return logits.softmax(-1)


KL_REDUCTIONS = {"sum": "sum", "mean": "batchmean"}  # name -> torch's kl_div reduction


def recall_kl(current: torch.Tensor, recorded: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """KL(recorded || current) of [N, n] allocations now vs [N, m <= n] recorded ones, zero-padded to n, summed
    over the samples (`sum`: Eq. 8 sums over earlier tasks and their stored samples) or averaged (`mean`). The
    recorded allocation is the target: zeros there contribute nothing (KL in the other direction would be
    infinite on the padding)."""
    target = F.pad(recorded, (0, current.shape[1] - recorded.shape[1]))
    return F.kl_div(current.clamp_min(1e-12).log(), target, reduction=KL_REDUCTIONS[reduction])
