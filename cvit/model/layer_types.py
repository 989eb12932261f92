"""Custom peft LoRA layer types for every Linear target (the pool's `AdapterLayer`): a layer class built with an
options dataclass, the options written beside each saved adapter so that `load_config(folder)` registers the same
layer before `PeftModel.from_pretrained(base, folder, config=...)`."""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn


class InputDependentLinear(LoraLinear):
    """A peft LoRA Linear whose update depends on the input (a mixture): `mixture(adapter, x)` gives each active
    adapter's update, added to the base layer's output; merging is refused."""

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(f"{type(self).__name__}'s update depends on the input: it cannot be merged")

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no input-independent delta weight")

    def mixture(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.get("adapter_names") is not None:
            raise NotImplementedError(f"{type(self).__name__} layers do not take per-row adapter_names")
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        for adapter in self.active_adapters:
            if adapter in self.lora_A:
                result = result + self.mixture(adapter, x).to(result.dtype)
        return result


class LinearLayerType:
    layer_class: ClassVar[type]
    options_class: ClassVar[type]
    file: ClassVar[str]

    def __init__(self, options: Any, r: int, alpha: float, target_modules: str) -> None:
        """`r`, `alpha`: the full layer's total rank over its experts and its LoRA alpha (scaling alpha / r)."""
        if r % options.experts:
            raise ValueError(f"rank r={r} does not divide into {options.experts} experts")
        self.options, self.r, self.alpha, self.target_modules = options, r, alpha, target_modules

    def rank_share(self) -> float:
        """The part of the full layer's rank the adapters build (1; SMoLoRA's single-branch ablations: 1/2)."""
        return 1.0

    def configure(self, lora: LoraConfig) -> LoraConfig:
        """The config of new adapters: `lora` (dropout, ...) with this type's rank, alpha (the full layer's scaling
        kept), targets and layer class."""
        share = self.rank_share()
        built = dataclasses.replace(lora, r=int(self.r * share), lora_alpha=self.alpha * share,
                                    target_modules=self.target_modules)
        return self.register_layer(built, self.options)

    def register(self, lora: LoraConfig, folder: Path) -> LoraConfig:
        """`lora`, read from a saved adapter `folder`, with the layer class and the options saved there."""
        return self.register_layer(lora, self.read_options(folder))

    def save(self, folder: Path) -> None:
        (folder / self.file).write_text(json.dumps(dataclasses.asdict(self.options)))

    @classmethod
    def read_options(cls, folder: str | Path) -> Any:
        saved = json.loads((Path(folder) / cls.file).read_text())
        return cls.options_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})

    @classmethod
    def register_layer(cls, lora: LoraConfig, options: Any) -> LoraConfig:
        """`lora` with every Linear target (plain, 8-bit or 4-bit) built as `layer_class`; returns it."""
        lora._register_custom_module({nn.Linear: partial(cls.layer_class, options=options)})
        return lora

    @classmethod
    def load_config(cls, folder: str | Path) -> LoraConfig:
        """The LoraConfig of an adapter folder saved by the kit, with its layer type registered."""
        return cls.register_layer(LoraConfig.from_pretrained(folder), cls.read_options(folder))
