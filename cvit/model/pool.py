"""The adapter pool: the module's named LoRA adapters (one owner for which exist, train, are active).

Methods change the pool at task start (add a block, select a group, freeze the rest) and at task
end (fuse); the continual loop saves every adapter after each task as peft safetensors, loadable
with plain `PeftModel.from_pretrained(base, run_dir/stages/<k>_<task>/adapters/<name>)`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

DEFAULT_ADAPTER = "default"


class AdapterPool:
    def __init__(self, model: torch.nn.Module, lora: LoraConfig) -> None:
        self.lora = lora
        self.peft: PeftModel = get_peft_model(model, lora, adapter_name=DEFAULT_ADAPTER)
        self.trainable: list[str] = [DEFAULT_ADAPTER]
        self.active: list[str] = [DEFAULT_ADAPTER]

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

    def copy(self, source: str, target: str) -> None:
        set_peft_model_state_dict(self.peft, get_peft_model_state_dict(self.peft, adapter_name=source), target)

    def set_active(self, names: list[str]) -> None:
        """Adapters whose outputs are summed in the forward pass."""
        self.peft.base_model.set_adapter(names if len(names) > 1 else names[0])
        self.active = list(names)
        self.set_trainable(self.trainable)  # peft's set_adapter also flips requires_grad

    def set_trainable(self, names: list[str]) -> None:
        """Exactly these adapters receive gradients; every other adapter is frozen."""
        for name in self.names:
            self.peft.set_requires_grad(name, requires_grad=name in names)
        self.trainable = list(names)

    def save(self, out_dir: Path) -> None:
        """Each adapter in `out_dir/<name>/` (adapter_config.json + adapter_model.safetensors)."""
        for name in self.names:
            staging = out_dir / f".staging-{name}"
            self.peft.save_pretrained(staging, selected_adapters=[name])
            # peft writes the "default" adapter at the folder's root and any other under <name>/
            os.replace(staging if name == DEFAULT_ADAPTER else staging / name, out_dir / name)
            shutil.rmtree(staging, ignore_errors=True)
        (out_dir / "pool.json").write_text(json.dumps({"active": self.active, "trainable": self.trainable}))

    def load(self, in_dir: Path) -> None:
        """Restore adapters saved by `save` (creating missing ones) and the active/trainable sets."""
        meta = json.loads((in_dir / "pool.json").read_text())
        for sub in sorted(p for p in in_dir.iterdir() if p.is_dir()):
            if sub.name not in self.peft.peft_config:
                self.peft.add_adapter(sub.name, self.lora)
            weights = load_file(sub / "adapter_model.safetensors")
            set_peft_model_state_dict(self.peft, weights, adapter_name=sub.name)
        self.set_active(meta["active"])
        self.set_trainable(meta["trainable"])
