"""The adapter pool: the module's named LoRA adapters (one owner for which exist, train, are active).

Methods change the pool at task start (add a block, select a group, freeze the rest) and at task
end (fuse); the continual loop saves every adapter after each task as peft safetensors, loadable
with plain `PeftModel.from_pretrained(base, run_dir/stages/<k>_<task>/adapters/<name>)`. A method's own
modules beside the adapters (allocation keys, projectors) are pool `extras`: registered on the module
(so the optimizer and device moves see them) and saved with the adapters in `extras.safetensors`.

The multimodal projector, when trained (`projector` given), is one module of the base model shared by every
adapter (not peft's per-adapter `modules_to_save` copies): it stays trainable whatever adapters are added,
fused or frozen, and is saved beside them as `projector.safetensors`, keyed as in the base model's own state
dict, so a user loads it with `base.load_state_dict(load_file(path), strict=False)` before
`PeftModel.from_pretrained`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

DEFAULT_ADAPTER = "default"


def indexed_adapter(index: int, prefix: str) -> str:
    """The name of the `index`-th adapter of a per-task (or per-block) method: the pool's initial adapter, then
    `<prefix><index>`."""
    return DEFAULT_ADAPTER if index == 0 else f"{prefix}{index}"
PROJECTOR_FILE = "projector.safetensors"


def find_module(model: torch.nn.Module, name: str) -> str:
    """The full name of the first submodule whose last name component is `name`."""
    for full, _ in model.named_modules():
        if full.rsplit(".", 1)[-1] == name:
            return full
    raise ValueError(f"the model has no module named {name!r}")


class AdapterLayer(Protocol):
    """A custom peft LoRA layer type for every adapter of a pool (e.g. `cvit.model.smolora.SMoLoRAType`)."""

    def configure(self, lora: LoraConfig) -> LoraConfig:
        """The config new adapters are created with (the layer type registered)."""

    def register(self, lora: LoraConfig, folder: Path) -> LoraConfig:
        """A config read back from the saved adapter `folder`, with the layer type (as saved there) registered."""

    def save(self, folder: Path) -> None:
        """Write what `register` needs into a saved adapter's folder."""


class AdapterPool:
    def __init__(self, model: torch.nn.Module, lora: LoraConfig, projector: str | None = None,
                 layer: AdapterLayer | None = None) -> None:
        """`projector`: the name (last component) of the base model's multimodal projector to train beside the
        adapters, or None to keep it frozen. `layer`: a custom LoRA layer type for every adapter (None: peft's own);
        a custom layer may sit on the trained projector's linears (SMoLoRA's experts do)."""
        self.layer = layer
        self.lora = lora if layer is None else layer.configure(lora)
        prefix = f"{find_module(model, projector)}." if projector else None
        self.peft: PeftModel = get_peft_model(model, self.lora, adapter_name=DEFAULT_ADAPTER)
        # found once: peft leaves the projector's modules in place (device moves keep the Parameter objects)
        projector_params = {n: p for n, p in self.peft.get_base_model().named_parameters()
                            if prefix is not None and n.startswith(prefix)}
        if layer is None and any(".lora_" in name for name in projector_params):
            raise ValueError("the LoRA target_modules reach the multimodal projector, which is trained whole "
                             "(model.lora.train_projector); narrow model.lora.target_modules or freeze the projector")
        # the projector's own weights, keyed as in the base model (an adapter layer wraps them as base_layer)
        self.projector = {n.replace(".base_layer.", "."): p for n, p in projector_params.items() if ".lora_" not in n}
        self.projector_prefix = prefix
        self.frozen_parts: list[str] = []  # adapter sub-modules kept frozen in trainable adapters (freeze_parts)
        self.trainable: list[str] = [DEFAULT_ADAPTER]
        self.active: list[str] = [DEFAULT_ADAPTER]
        self.extras = torch.nn.ModuleDict()
        self.restored_extras: dict[str, torch.Tensor] = {}  # loaded weights of extras not created yet
        self.set_trainable(self.trainable)

    def projector_side(self) -> list[torch.nn.Parameter]:
        """Every parameter inside the trained projector: its own weights and any adapter parts on its linears (the
        LLaVA trainer's `mm_projector_lr` group, which SMoLoRA's released scripts use, takes them by that name)."""
        if self.projector_prefix is None:
            return []
        return [p for n, p in self.peft.get_base_model().named_parameters() if n.startswith(self.projector_prefix)]

    def add_extra(self, name: str, module: torch.nn.Module) -> torch.nn.Module:
        """Register a method's module under `name` on the model's device; weights a saved stage holds for it
        are loaded into it. Its parameters' requires_grad is the method's to set. Returns the module."""
        module.to(next(self.peft.parameters()).device)
        self.restore_extra(name, module)
        self.extras[name] = module
        return module

    def restore_extra(self, name: str, module: torch.nn.Module) -> None:
        prefix = f"{name}."
        restored = {k[len(prefix):]: v for k, v in self.restored_extras.items() if k.startswith(prefix)}
        if restored:
            module.load_state_dict(restored)

    def parameter_count(self, adapters: list[str] | None = None, layers: set[str] | None = None,
                        parts: tuple[str, ...] | None = None) -> int:
        """Parameters of `adapters` (default: every adapter, every extra and the trained projector) in the LoRA
        layers named in `layers` (default: all), counting the adapter sub-modules named in `parts` (e.g.
        ("lora_A", "lora_B"); default: all of them)."""
        total = 0
        for name, param in self.peft.named_parameters():
            if not any(f".{a}." in name for a in (self.names if adapters is None else adapters)):
                continue
            chosen = "lora_" in name if parts is None else any(f".{part}." in name for part in parts)
            if chosen and (layers is None or name.rsplit(".lora_", 1)[0] in layers):
                total += param.numel()
        if adapters is None:
            total += self.extras_size + self.projector_size
        return total

    @property
    def extras_size(self) -> int:
        """Parameters of the methods' own modules."""
        return sum(p.numel() for p in self.extras.parameters())

    @property
    def projector_size(self) -> int:
        """Parameters of the trained projector (0 when it is frozen)."""
        return sum(p.numel() for p in self.projector.values())

    @property
    def names(self) -> list[str]:
        return list(self.peft.peft_config)

    def add(self, name: str, init_from: str | None = None) -> None:
        """A new adapter with the pool's LoRA config, freshly initialised or copied from `init_from`."""
        if name in self.peft.peft_config:
            raise ValueError(f"adapter {name!r} already exists")
        self.peft.add_adapter(name, self.lora)
        if init_from is not None:
            self.copy(init_from, name)
        self.set_trainable(self.trainable)

    def train_only(self, name: str, init_from: str | None = None, active: list[str] | None = None) -> None:
        """Make `name` the one adapter that trains (added first if the pool lacks it, see `add`) and `active` (default:
        `name` alone) the ones the forward sums: a task's start in every per-task or per-group method."""
        if name not in self.names:
            self.add(name, init_from)
        self.set_active(active or [name])
        self.set_trainable([name])

    def fuse(self, name: str, adapters: list[str], weights: list[float], combination: str) -> None:
        """(Re)create adapter `name` as peft's `add_weighted_adapter` of `adapters` with `weights`:
        `linear` gives (sum_i sqrt(w_i s_i) B_i)(sum_i sqrt(w_i s_i) A_i) at the same rank (the new adapter's own
        scaling is 1), `cat` the exact sum_i w_i s_i B_i A_i at the summed rank. Active and trainable adapters are
        unchanged."""
        if name in self.peft.peft_config:
            self.peft.delete_adapter(name)
        self.peft.add_weighted_adapter(adapters, weights, name, combination_type=combination)
        self.set_active(self.active)

    def copy(self, source: str, target: str) -> None:
        set_peft_model_state_dict(self.peft, get_peft_model_state_dict(self.peft, adapter_name=source), target)

    def set_active(self, names: list[str]) -> None:
        """Adapters whose outputs are summed in the forward pass."""
        self.peft.base_model.set_adapter(names if len(names) > 1 else names[0])
        self.active = list(names)
        self.set_trainable(self.trainable)  # peft's set_adapter also flips requires_grad

    @contextmanager
    def activated(self, names: list[str]) -> Iterator[None]:
        """Inside: `names` are the active adapters; the previous ones are active again on exit."""
        previous = self.active
        self.set_active(names)
        try:
            yield
        finally:
            self.set_active(previous)

    def set_trainable(self, names: list[str]) -> None:
        """Exactly these adapters receive gradients (less their `frozen_parts`); every other adapter is frozen."""
        for name in self.names:
            self.peft.set_requires_grad(name, requires_grad=name in names)
        if self.frozen_parts:
            for name, param in self.peft.named_parameters():
                if any(f".{part}." in name for part in self.frozen_parts):
                    param.requires_grad_(False)
        for param in self.projector.values():  # peft freezes every non-adapter weight it meets
            param.requires_grad_(True)
        self.trainable = list(names)

    def freeze_parts(self, parts: list[str]) -> None:
        """Keep the adapter sub-modules named `parts` (e.g. SMoLoRA's "lora_vu_gate") frozen from now on, in every
        adapter, whatever `set_trainable` later makes trainable."""
        self.frozen_parts = sorted(set(self.frozen_parts) | set(parts))
        self.set_trainable(self.trainable)

    def save(self, out_dir: Path) -> None:
        """Each adapter in `out_dir/<name>/` (adapter_config.json + adapter_model.safetensors)."""
        for name in self.names:
            staging = out_dir / f".staging-{name}"
            self.peft.save_pretrained(staging, selected_adapters=[name])
            # peft writes the "default" adapter at the folder's root and any other under <name>/
            os.replace(staging if name == DEFAULT_ADAPTER else staging / name, out_dir / name)
            shutil.rmtree(staging, ignore_errors=True)
            if self.layer is not None:
                self.layer.save(out_dir / name)
        (out_dir / "pool.json").write_text(json.dumps(
            {"active": self.active, "trainable": self.trainable, "frozen_parts": self.frozen_parts}))
        if len(self.extras):
            save_file({k: v.detach().cpu().contiguous() for k, v in self.extras.state_dict().items()},
                      out_dir / "extras.safetensors")
        if self.projector:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.projector.items()},
                      out_dir / PROJECTOR_FILE)

    def load(self, in_dir: Path) -> None:
        """Restore adapters saved by `save` (creating missing ones) and the active/trainable sets."""
        meta = json.loads((in_dir / "pool.json").read_text())
        extras = in_dir / "extras.safetensors"
        self.restored_extras = load_file(extras) if extras.is_file() else {}
        for name, module in self.extras.items():
            self.restore_extra(name, module)
        for sub in sorted(p for p in in_dir.iterdir() if p.is_dir()):
            config = LoraConfig.from_pretrained(sub)  # its own: a fused adapter may have another rank
            if self.layer is not None:
                config = self.layer.register(config, sub)
            if sub.name in self.peft.peft_config and self.peft.peft_config[sub.name].r != config.r:
                self.peft.delete_adapter(sub.name)
            if sub.name not in self.peft.peft_config:
                self.peft.add_adapter(sub.name, config)
            weights = load_file(sub / "adapter_model.safetensors")
            set_peft_model_state_dict(self.peft, weights, adapter_name=sub.name)
        if self.projector:
            self.load_projector(in_dir / PROJECTOR_FILE)
        self.frozen_parts = meta["frozen_parts"]
        self.set_active(meta["active"])
        self.set_trainable(meta["trainable"])

    def load_projector(self, path: Path) -> None:
        """Copy a saved projector's weights into the trained projector."""
        weights, params = load_file(path), self.projector
        if set(weights) != set(params):
            raise ValueError(f"{path}: holds {sorted(weights)}, the projector has {sorted(params)}")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(weights[name])
