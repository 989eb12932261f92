"""Weighted mixtures of LoRA adapters, per layer and per batch row, through peft's own LoRA layers.

Inside `mixed(peft_model, weights, layers)`, every LoRA layer named in `layers` computes

    base(x) + sum over adapters n in `weights` of  w_n * scaling_n * B_n A_n dropout(x)

where a weight is a float or a [B] tensor (one weight per batch row, broadcast over the token and feature
dimensions of a [B, L, d] input; it may carry gradients). It does so by making exactly those adapters
active in the layer and multiplying peft's per-adapter `scaling` by the weight, so peft's forward (dropout,
dtype casts, 4-bit base layers) does the work; `tests/test_mixing.py` checks the result against the sum
computed by hand, so a peft release that changed this contract would fail there. A row weight is moved to
the input's device and cast, at each forward, to the dtype the LoRA branch computes in (the autocast dtype
under autocast), so mixing never promotes the residual stream to float32. Mixtures on disjoint layer sets
nest; everything is restored on exit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from weakref import WeakKeyDictionary

import torch
from peft.tuners.lora import LoraLayer

Weight = float | torch.Tensor
LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")
_LAYERS: WeakKeyDictionary = WeakKeyDictionary()  # model -> its LoRA layers (mixing runs at every step)


def lora_layers(model: torch.nn.Module) -> dict[str, LoraLayer]:
    """Every peft LoRA layer of `model` by module name. Found once per model: peft adds later adapters to the
    same layer objects, so walking the whole module tree again at every mixed forward would be wasted."""
    if model not in _LAYERS:
        _LAYERS[model] = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    return _LAYERS[model]


def decoder_layer_index(name: str) -> int | None:
    """The language-model decoder layer a module belongs to (from '...language_model...layers.<i>.'), or None."""
    if "language_model" not in name:
        return None
    match = LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


def top_decoder_layer(names) -> int:
    """The highest decoder-layer index among module `names` (those outside decoder layers ignored)."""
    return max(i for i in map(decoder_layer_index, names) if i is not None)


def layers_in(model: torch.nn.Module, decoder_layers: Iterable[int] | None) -> list[str]:
    """Names of the LoRA layers in the given decoder layers (all LoRA layers when None)."""
    names = list(lora_layers(model))
    if decoder_layers is None:
        return names
    wanted = set(decoder_layers)
    return [name for name in names if decoder_layer_index(name) in wanted]


def branch_dtype(layer: LoraLayer, adapter: str, x: torch.Tensor) -> torch.dtype:
    """The dtype of the adapter's LoRA output for input `x`: the autocast dtype under autocast, else its weights'."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return layer.lora_B[adapter].weight.dtype


def row_scalings(layer: LoraLayer, rows: dict[str, torch.Tensor], bases: dict[str, float]):
    """A forward pre-hook setting each adapter's scaling to base * its [B] row weights, shaped [B, 1, 1] on
    the input's device and in the LoRA branch's dtype."""

    def hook(module, args):
        x = args[0]
        for adapter, weight in rows.items():
            scale = weight.to(device=x.device, dtype=branch_dtype(layer, adapter, x)).reshape(-1, 1, 1)
            layer.scaling[adapter] = bases[adapter] * scale

    return hook


@contextmanager
def mixed(model: torch.nn.Module, weights: Mapping[str, Weight], layers: Iterable[str] | None = None) -> Iterator[None]:
    """Inside: the LoRA layers named in `layers` (default: all) sum the adapters of `weights`, each output
    multiplied by its weight (see the module docstring). An adapter missing from a layer is skipped there."""
    modules = lora_layers(model)
    chosen = list(modules) if layers is None else list(layers)
    saved, hooks = [], []
    for name in chosen:
        layer = modules[name]
        present = [adapter for adapter in weights if adapter in layer.lora_A]
        bases = {a: layer.scaling[a] for a in present}
        saved.append((layer, layer._active_adapter, bases))
        rows = {a: weights[a] for a in present if isinstance(weights[a], torch.Tensor)}
        for adapter in present:
            if adapter not in rows:
                layer.scaling[adapter] = bases[adapter] * weights[adapter]
        if rows:
            hooks.append(layer.register_forward_pre_hook(row_scalings(layer, rows, bases)))
        layer._active_adapter = present
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for layer, active, scaling in saved:
            layer._active_adapter = active
            layer.scaling.update(scaling)
