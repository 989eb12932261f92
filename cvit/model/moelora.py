"""MoELoRA (as CoIN's `coinmoelora.py`) as a peft LoRA layer type: E experts of rank r / E in an adapted linear,
mixed per token by a dense softmax router on the layer's input,

    y = base(x) + scaling * sum_e softmax(router(x))_e B_e A_e dropout(x)      router: Linear(in, E, no bias)

with the experts stacked as peft's own `lora_A` [r, in] / `lora_B` [out, r] (expert e owns rank rows e*k .. e*k+k-1;
peft's init: A Kaiming-uniform, B = 0) and the router a per-adapter `lora_router` module, so peft creates, trains,
saves and loads it. Any Linear base (plain, 8-bit or 4-bit bitsandbytes) is only called. While `balance_probs`
is a list, every forward with gradients appends its router probabilities [tokens, E] (for a load-balancing term).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from torch import nn

from cvit.model.layer_types import InputDependentLinear, LinearLayerType


@dataclass(frozen=True)
class MoELoRAOptions:
    experts: int = 8

    def __post_init__(self) -> None:
        if self.experts < 1:
            raise ValueError(f"experts must be >= 1, got {self.experts}")


class MoELoRALinear(InputDependentLinear):
    adapter_layer_names = LoraLayer.adapter_layer_names + ("lora_router",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, options: MoELoRAOptions,
                 **kwargs: Any) -> None:
        self.options = options  # update_layer, called by peft's __init__, reads it
        self.balance_probs: list[torch.Tensor] | None = None
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs: Any) -> None:
        if r % self.options.experts:
            raise ValueError(f"rank {r} does not divide into {self.options.experts} experts")
        if not hasattr(self, "lora_router"):
            self.lora_router = nn.ModuleDict()
        super().update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)
        self.lora_router[adapter_name] = nn.Linear(self.in_features, self.options.experts, bias=False)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def router_weights(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """[..., E] per-token softmax over the experts (computed in float32)."""
        router = self.lora_router[adapter]
        return torch.softmax(router(x.to(router.weight.dtype)).float(), -1)

    def mixture(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        lora_A, lora_B = self.lora_A[adapter], self.lora_B[adapter]
        x = self._cast_input_dtype(x, lora_A.weight.dtype)
        hidden = lora_A(self.lora_dropout[adapter](x))
        weights = self.router_weights(adapter, x)
        if self.balance_probs is not None and torch.is_grad_enabled():
            self.balance_probs.append(weights.reshape(-1, weights.shape[-1]))
        rank = hidden.shape[-1] // self.options.experts
        return lora_B(hidden * weights.to(hidden.dtype).repeat_interleave(rank, dim=-1)) * self.scaling[adapter]


class MoELoRAType(LinearLayerType):
    layer_class = MoELoRALinear
    options_class = MoELoRAOptions
    file = "moelora.json"


load_config = MoELoRAType.load_config


def moelora_layers(model: nn.Module) -> dict[str, MoELoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MoELoRALinear)}


def load_balance(probs: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's auxiliary loss for [tokens, E] router probabilities: E * sum_e f_e P_e, f_e the share of
    tokens whose top expert is e, P_e the mean probability of e (1 when perfectly balanced)."""
    experts = probs.shape[-1]
    share = torch.bincount(probs.argmax(-1), minlength=experts).to(probs.dtype) / len(probs)
    return experts * (share * probs.mean(0)).sum()
