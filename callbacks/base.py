"""The base class of every cvit callback: Lightning's `Callback` plus the continual task hooks.

Hook contract (called by `cvit.run.loop.ContinualRun` on every callback, in YAML order):
  on_task_start(trainer, module, datamodule, task)  before the task's `trainer.fit` builds its data:
      the place for structural changes (add / select / freeze adapters in `module.pool`) and data
      changes (`datamodule.mix_in(...)` for replay).
  on_task_end(trainer, module, datamodule, task)    after `fit`, before the task's evaluation:
      consolidation (fusion, anchors, Fisher, writing EMA weights back).
  training_loss(module, batch, outputs) -> dict[str, Tensor]   extra loss terms added in the
      training step (EWC, LwF, KL recall, ...); keys are logged as `loss/<key>`.
Step-level work uses Lightning's own hooks (e.g. `on_train_batch_end` for a per-step EMA, gated by
`optimizer_stepped()` under gradient accumulation).
A method with its own LoRA layer type returns it from `adapter_layer()` (asked once, before the model loads,
after `check_model`); the pool builds every adapter with it (owning "adapter_layer" keeps it to one callback).
Inference-time routing is installed on the module (`module.set_router(...)`), which owns it.
State: `state_dict()` / `load_state_dict()` are saved after every task and restored on resume;
`owns` names shared things the callback takes charge of, so the validator can reject two owners;
`sequential_only` callbacks need one task per stage (they are refused for joint and zero-shot runs);
`requires()` names what earlier callbacks in the YAML order must `provide()` (e.g. task recall by
allocation weights needs the progressive pool before it), checked before any model is loaded.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L

if TYPE_CHECKING:
    import torch

    from cvit.data.datamodule import ContinualDataModule
    from cvit.data.stream import Task
    from cvit.model.pool import AdapterLayer
    from cvit.module import ContinualModule


class Shared(str, Enum):
    """What at most one callback of a run takes charge of (`owns`)."""

    ADAPTER_POOL = "adapter_pool"  # adds, selects, freezes the pool's adapters (module.pool)
    ROUTER = "router"  # installs the module's routing (module.set_router)
    ADAPTER_LAYER = "adapter_layer"  # gives the pool its LoRA layer type (adapter_layer())


class Capability(str, Enum):
    """What a callback's set-up offers the callbacks after it (`provides`) and they may need (`requires`);
    a user's callbacks may name their own with any other string."""

    ALLOCATION = "allocation"  # module.router.similarity[task]: task similarity weights (ProgLoRA's pool)
    DYNAMIC_ALLOCATION = "dynamic_allocation"  # module.router.pooled / allocate: per-instance block weights


class ContinualCallback(L.Callback):
    owns: ClassVar[tuple[Shared, ...]] = ()
    sequential_only: ClassVar[bool] = False
    # "writes": on_task_end replaces the trained weights (EMA); "reads": on_task_end consolidates them (fusion,
    # recorded allocations). Readers must come after writers in YAML order (no fusion before EMA).
    task_end_weights: ClassVar[str] = ""
    # True: reads every trainable parameter and its gradient whole at each step (a per-step EMA), so a strategy that
    # shards them across ranks (fsdp, deepspeed stage 2/3) is refused before the model loads
    whole_parameters: ClassVar[bool] = False
    config_key: str = ""  # the callback's key in the config's `callbacks` mapping (set by the registry)

    def check_model(self, model_config: Any) -> None:
        """Called before the model loads with its Hugging Face config: raise ConfigError on arguments that
        cannot fit it (e.g. a layer index past the last layer)."""

    def adapter_layer(self) -> AdapterLayer | None:
        """A custom LoRA layer type for every adapter of the pool (cvit.model.pool.AdapterLayer), or None."""
        return None

    def provides(self) -> tuple[str, ...]:
        """Capabilities this callback offers to the callbacks after it (through the module it sets up)."""
        return ()

    def requires(self) -> tuple[str, ...]:
        """Capabilities that callbacks before this one must provide."""
        return ()

    def on_before_optimizer_step(self, trainer: L.Trainer, module: ContinualModule, optimizer: Any) -> None:
        """Marks the optimizer step for `optimizer_stepped` (an override calls super())."""
        self._optimizer_stepped = True

    def optimizer_stepped(self) -> bool:
        """In `on_train_batch_end`: whether this batch ended with an optimizer step, so per-step work (an EMA)
        runs once per step under gradient accumulation. Clears the mark: call it once per batch."""
        stepped, self._optimizer_stepped = getattr(self, "_optimizer_stepped", False), False
        return stepped

    @property
    def state_key(self) -> str:
        """Unique per config entry, so two instances of one class keep apart in Lightning checkpoints."""
        return f"{type(self).__qualname__}[{self.config_key}]"

    def on_task_start(
        self, trainer: L.Trainer | None, module: ContinualModule, datamodule: ContinualDataModule, task: Task
    ) -> None:
        """Before the task's fit (trainer is None when the method does not train)."""

    def on_task_end(
        self, trainer: L.Trainer | None, module: ContinualModule, datamodule: ContinualDataModule, task: Task
    ) -> None:
        """After the task's fit, before evaluation."""

    def training_loss(
        self, module: ContinualModule, batch: dict[str, Any], outputs: Any
    ) -> dict[str, torch.Tensor]:
        """Extra loss terms for this training step (none by default)."""
        return {}
