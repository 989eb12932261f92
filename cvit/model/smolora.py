"""SMoLoRA's separable mixture of LoRA as a peft LoRA layer type (registered through peft's custom-module API).

One adapter of a `SMoLoRALinear` layer holds `experts` LoRA experts of rank r / experts, stacked as peft's own
`lora_A` [r, in] and `lora_B` [out, r] (expert e owns rank rows e*k .. e*k + k - 1), split into a visual-
understanding (VU) branch (the first experts) and an instruction-following (IF) branch (the rest):

    VU route  top1(gate_vu(mean of the layer's input x))            gate_vu: Linear(in, E_vu, no bias)
    IF route  top1(gate_if(the row's instruction embedding))        gate_if: Linear(d_e, E_if, no bias), d_e = 384
    b_out     = scaling * B (mask_b * A dropout(x))                 mask_b: the routed expert's rank slice, per row
    (alpha, beta) = softmax(fuse_vu(vu_out), fuse_if(if_out))      per token; fuse_*: Linear(out, 1, no bias)
    y         = base(x) + alpha vu_out + beta if_out                (one branch: y = base(x) + b_out)

with scaling = lora_alpha / r (the released code's alpha 256 / r 128 = 2), A ~ N(0, 0.01), B = 0. The extra
modules are peft adapter layers named `lora_*`, so peft creates, trains, saves and loads them per adapter; the
layer options (experts, branches, routing) are written beside each adapter as `smolora.json`, which
`load_config` reads back to register the layer type before `PeftModel.from_pretrained`:

    config = load_config(folder)
    model = PeftModel.from_pretrained(base, folder, config=config)
    attach(model, RoutingContext())   # then run forwards inside `context.inputs(...)`

Routing `paper` (default): a straight-through top-1 while a gate trains (the forward uses the hard choice; the
chosen expert's gate probability carries the gradient, to the gate and, as in any learned router, to the layer
input; a frozen gate is a plain hard top-1), the VU mean over the positions `RoutingContext.inputs(prompt_mask=...)`
marks (the prompt's real tokens) and, in generation (`fix_vu=True`), each layer's VU choice fixed at its first
forward (the prefill), so cached and uncached decoding agree. Routing `released` (the authors' code): hard top-1
masks built from constants (no gradient reaches a gate) and the VU mean over the positions the mask marks when it
fits the input, else over every position (the router gives no mask in training: padding included; in generation
the attention mask, which fits the prefill, as the released batch-1 evaluation sees no padding, and no longer fits
a cached decoding step, which routes on its own token alone). Which instruction embedding a row gets is the
router's choice (`cvit.methods.smolora_routing`). The base layer may be a plain, 8-bit or 4-bit bitsandbytes
Linear: it is only called. Merging is refused: the update depends on the input.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from torch import nn

from cvit.model.layer_types import InputDependentLinear, LinearLayerType

BRANCHES = ("vu", "if")
ROUTINGS = ("paper", "released")
INSTRUCTION_DIM = 384  # all-MiniLM-L6-v2
OPTIONS_FILE = "smolora.json"
GATES = ("lora_vu_gate", "lora_if_gate")
FUSION_HEADS = ("lora_vu_fuse", "lora_if_fuse")


@dataclass(frozen=True)
class SMoLoRAOptions:
    """`experts` of the full two-branch layer (half VU, half IF); `branches` the ones built (a single-branch ablation
    builds its half of the experts and of the rank, at the full layer's scaling)."""

    experts: int = 8
    branches: tuple[str, ...] = BRANCHES
    routing: str = "paper"  # paper | released

    def __post_init__(self) -> None:
        if not self.branches or len(set(self.branches)) != len(self.branches) or set(self.branches) - set(BRANCHES):
            raise ValueError(f"branches must be distinct names from {BRANCHES}, got {list(self.branches)}")
        if self.experts <= 0 or self.experts % 2:
            raise ValueError(f"experts={self.experts} does not split into the two branches (VU and IF)")
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {self.routing!r}")

    @property
    def per_branch(self) -> int:
        return self.experts // 2

    @property
    def built(self) -> int:
        """Experts the layer holds: per_branch for each branch built."""
        return self.per_branch * len(self.branches)


class RoutingContext:
    """What a forward's SMoLoRA layers route on, shared by every layer of one model (set with `inputs`).

    instruction [B, d_e]: each row's IF gate input. prompt_mask [B, L] (optional): the positions of a language-model
    layer's input that the VU mean averages (None: every position). segments [B] (optional): for 2-D inputs (Qwen2-VL's
    merger sees [N, d] with every image's tokens concatenated), each row's share of the N tokens (e.g. its grid's
    t*h*w). fix_vu: keep each layer's first VU choice for the rest of the context (generation). `recorder`, when
    set, is called as recorder(layer_name, alpha [B] or None, vu [B] or None, if [B] or None) at every forward.
    """

    def __init__(self) -> None:
        self.instruction: torch.Tensor | None = None
        self.prompt_mask: torch.Tensor | None = None
        self.segments: torch.Tensor | None = None
        self.fixed: dict[tuple[str, str], torch.Tensor] | None = None
        self.recorder = None
        self.moved: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}  # `instruction` per device and dtype

    @contextmanager
    def inputs(self, instruction: torch.Tensor, prompt_mask: torch.Tensor | None = None,
               segments: torch.Tensor | None = None, fix_vu: bool = False) -> Iterator[None]:
        previous = (self.instruction, self.prompt_mask, self.segments, self.fixed)
        self.instruction, self.prompt_mask, self.segments = instruction, prompt_mask, segments
        self.fixed = {} if fix_vu else None
        self.moved = {}
        try:
            yield
        finally:
            self.instruction, self.prompt_mask, self.segments, self.fixed = previous
            self.moved = {}

    def instruction_as(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """`instruction` on `device` in `dtype`, moved once per forward context (every layer asks for it)."""
        key = (device, dtype)
        if key not in self.moved:
            self.moved[key] = self.instruction.to(device=device, dtype=dtype)
        return self.moved[key]

    def check_rows(self, x: torch.Tensor, layer: str) -> None:
        """A 3-D input has one row per instruction; a 2-D one one segment per instruction."""
        rows = len(self.instruction)
        if x.dim() == 3 and x.shape[0] != rows:
            raise ValueError(f"{layer}: input of {x.shape[0]} rows, routing inputs for {rows} (one image per row)")
        if x.dim() == 2 and self.segments is not None and len(self.segments) != rows:
            raise ValueError(f"{layer}: {len(self.segments)} image segments for {rows} rows (one image per row)")

    def token_rows(self, x: torch.Tensor) -> torch.Tensor:
        """[N] the row each token of a 2-D input [N, d] belongs to."""
        rows = len(self.instruction)
        if self.segments is None:
            if rows != 1:
                raise ValueError(f"a 2-D input of {rows} rows needs RoutingContext segments")
            return torch.zeros(len(x), dtype=torch.long, device=x.device)
        counts = (self.segments.to(torch.float64) * len(x) / self.segments.sum()).round().long()
        if counts.sum() != len(x):
            raise ValueError(f"segments {self.segments.tolist()} do not divide the {len(x)} tokens")
        return torch.repeat_interleave(torch.arange(rows, device=x.device), counts.to(x.device))


def row_means(values: torch.Tensor, rows: torch.Tensor, count: int) -> torch.Tensor:
    """[count, ...] float32: the mean of the [N, ...] `values` over the tokens of each row (`rows` [N])."""
    sums = torch.zeros(count, *values.shape[1:], dtype=torch.float32, device=values.device)
    sums.index_add_(0, rows, values.float())
    counts = torch.bincount(rows, minlength=count).clamp(min=1).to(sums.dtype)
    return sums / counts.reshape(-1, *([1] * (values.dim() - 1)))


def top1(logits: torch.Tensor, straight_through: bool) -> torch.Tensor:
    """[R, E] one-hot of each row's argmax; with `straight_through` the chosen entry carries the gradient of its
    softmax probability (its value stays exactly 1)."""
    hard = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    if not straight_through:
        return hard
    probs = torch.softmax(logits.float(), -1).to(logits.dtype)
    return hard + hard * (probs - probs.detach())  # p - p.detach() is exactly 0: the value stays one-hot


class SMoLoRALinear(InputDependentLinear):
    """peft's LoRA Linear with SMoLoRA's routed experts (module docstring); built by peft's custom-module dispatch."""

    adapter_layer_names = LoraLayer.adapter_layer_names + GATES + FUSION_HEADS

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, options: SMoLoRAOptions,
                 **kwargs: Any) -> None:
        self.options = options  # update_layer, called by peft's __init__, reads it
        self.layer_name = kwargs.get("target_name", "")
        self.language = "language_model" in self.layer_name  # else a vision-side layer (the projector)
        self.routing_context: RoutingContext | None = None
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs: Any) -> None:
        if r % self.options.built:
            raise ValueError(f"rank {r} does not divide into {self.options.built} experts")
        for name in GATES + FUSION_HEADS:
            if not hasattr(self, name):
                setattr(self, name, nn.ModuleDict())
        super().update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)
        if config.init_lora_weights:
            nn.init.normal_(self.lora_A[adapter_name].weight, std=0.01)
        k = self.options.per_branch
        branches = self.options.branches
        if "vu" in branches:
            self.lora_vu_gate[adapter_name] = nn.Linear(self.in_features, k, bias=False)
        if "if" in branches:
            self.lora_if_gate[adapter_name] = nn.Linear(INSTRUCTION_DIM, k, bias=False)
        if len(branches) == 2:
            self.lora_vu_fuse[adapter_name] = nn.Linear(self.out_features, 1, bias=False)
            self.lora_if_fuse[adapter_name] = nn.Linear(self.out_features, 1, bias=False)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def context(self) -> RoutingContext:
        ctx = self.routing_context
        if ctx is None or ctx.instruction is None:
            raise RuntimeError(f"SMoLoRA layer {self.layer_name!r} ran without routing inputs: attach a RoutingContext "
                               "and run the forward inside its inputs(...)")
        return ctx

    def vu_summary(self, x: torch.Tensor, ctx: RoutingContext) -> torch.Tensor:
        """[R, in] each row's mean of the layer input (module docstring: which positions)."""
        if x.dim() == 2:
            return row_means(x, ctx.token_rows(x), len(ctx.instruction)).to(x.dtype)
        mask = ctx.prompt_mask if self.language else None
        if mask is None or (mask.shape != x.shape[:2] and self.options.routing == "released"):
            return x.mean(1)
        if mask.shape != x.shape[:2]:
            raise ValueError(f"{self.layer_name}: prompt mask {tuple(mask.shape)} does not fit input {tuple(x.shape)}")
        weights = mask.to(device=x.device, dtype=torch.float32).unsqueeze(-1)
        return ((x.float() * weights).sum(1) / weights.sum(1).clamp(min=1)).to(x.dtype)

    def routes(self, adapter: str, x: torch.Tensor, ctx: RoutingContext) -> dict[str, torch.Tensor]:
        """Branch -> [R, E_b] top-1 masks per row."""
        def straight(gate: nn.Linear) -> bool:
            return self.options.routing == "paper" and gate.weight.requires_grad and torch.is_grad_enabled()

        masks = {}
        if adapter in self.lora_vu_gate:
            key = (self.layer_name, adapter)
            if ctx.fixed is not None and key in ctx.fixed:
                masks["vu"] = ctx.fixed[key]
            else:
                gate = self.lora_vu_gate[adapter]
                masks["vu"] = top1(gate(self.vu_summary(x, ctx).to(gate.weight.dtype)), straight(gate))
                if ctx.fixed is not None:
                    ctx.fixed[key] = masks["vu"].detach()
        if adapter in self.lora_if_gate:
            gate = self.lora_if_gate[adapter]
            masks["if"] = top1(gate(ctx.instruction_as(x.device, gate.weight.dtype)), straight(gate))
        return masks

    def mixture(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """The adapter's routed, fused update for input x ([B, L, in] or [N, in]) -> same leading shape, [.., out]."""
        ctx = self.context()
        ctx.check_rows(x, self.layer_name)
        lora_A, lora_B = self.lora_A[adapter], self.lora_B[adapter]
        x = self._cast_input_dtype(x, lora_A.weight.dtype)
        hidden = lora_A(self.lora_dropout[adapter](x))
        rank = hidden.shape[-1] // self.options.built
        masks = self.routes(adapter, x, ctx)
        token_rows = ctx.token_rows(x) if x.dim() == 2 else None
        outputs = {}
        for position, branch in enumerate(self.options.branches):
            per_row = torch.zeros(len(masks[branch]), self.options.built, dtype=hidden.dtype, device=hidden.device)
            start = position * self.options.per_branch
            per_row[:, start:start + self.options.per_branch] = masks[branch].to(hidden.dtype)
            rank_mask = per_row.repeat_interleave(rank, dim=-1)  # [R, r]
            rank_mask = rank_mask[token_rows] if token_rows is not None else rank_mask[:, None, :]
            outputs[branch] = lora_B(hidden * rank_mask) * self.scaling[adapter]
        alpha = None
        if len(outputs) == 2:
            weights = self.fusion_weights(adapter, outputs["vu"], outputs["if"])
            delta = weights[..., :1] * outputs["vu"] + weights[..., 1:] * outputs["if"]
            alpha = weights[..., 0]
        else:
            delta = outputs[self.options.branches[0]]
        if ctx.recorder is not None:
            self.record(ctx, x, alpha, masks)
        return delta

    def fusion_weights(self, adapter: str, vu_out: torch.Tensor, if_out: torch.Tensor) -> torch.Tensor:
        """[..., 2] per-token (alpha, beta) = softmax(fuse_vu(vu_out), fuse_if(if_out)), in the branches' dtype."""
        scores = torch.cat([self.lora_vu_fuse[adapter](vu_out), self.lora_if_fuse[adapter](if_out)], -1)
        return torch.softmax(scores.float(), -1).to(vu_out.dtype)

    def record(self, ctx: RoutingContext, x: torch.Tensor, alpha: torch.Tensor | None,
               masks: dict[str, torch.Tensor]) -> None:
        """Report each row's mean alpha over the positions the VU mean uses, and its chosen experts."""
        row_alpha = None
        if alpha is not None:
            if x.dim() == 2:
                row_alpha = row_means(alpha, ctx.token_rows(x), len(ctx.instruction))
            else:
                mask = ctx.prompt_mask if self.language and ctx.prompt_mask is not None \
                    and ctx.prompt_mask.shape == alpha.shape else torch.ones_like(alpha)
                mask = mask.to(device=alpha.device, dtype=torch.float32)
                row_alpha = (alpha.float() * mask).sum(1) / mask.sum(1).clamp(min=1)
            row_alpha = row_alpha.detach().cpu()
        choice = {b: m.argmax(-1).cpu() for b, m in masks.items()}
        ctx.recorder(self.layer_name, row_alpha, choice.get("vu"), choice.get("if"))


class SMoLoRAType(LinearLayerType):
    """The pool's layer type for SMoLoRA (`cvit.model.pool.AdapterPool(layer=...)`); options in `smolora.json`."""

    layer_class = SMoLoRALinear
    options_class = SMoLoRAOptions
    file = OPTIONS_FILE

    def rank_share(self) -> float:
        return len(self.options.branches) / 2


load_config = SMoLoRAType.load_config


def smolora_layers(model: nn.Module) -> dict[str, SMoLoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SMoLoRALinear)}


def attach(model: nn.Module, context: RoutingContext) -> None:
    """Make every SMoLoRA layer of `model` route on `context`."""
    for layer in smolora_layers(model).values():
        layer.routing_context = context
