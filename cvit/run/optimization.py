"""The optimizer and learning-rate schedule of every task's fit (a fresh pair per task), from the config:

  train.optimizer: {class_path: torch.optim.AdamW, kwargs: {}}
      any torch.optim.Optimizer ("package.module.Class" or "package.module:Class"; e.g. bitsandbytes.optim.
      PagedAdamW8bit), built on the module's parameter groups with lr = train.lr, weight_decay =
      train.weight_decay and `kwargs` (betas, eps, ...).
  train.schedule: {name: cosine, kwargs: {}}
      a `transformers.get_scheduler` name (cosine, linear, constant_with_warmup, cosine_with_min_lr, ...),
      stepped per optimizer step, warming up over train.warmup_ratio of the task's optimizer steps; `kwargs` are
      the schedule's own (e.g. min_lr_rate).
AdamW + cosine is the default: what LLaVA's trainer and every seed paper's released scripts use.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import get_scheduler
from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION
from transformers.trainer_utils import SchedulerType

from cvit.config.load import Sources
from cvit.errors import ConfigError

SCHEDULES = tuple(kind.value for kind in SchedulerType if kind.value not in ("reduce_lr_on_plateau", "greedy"))
FROM_TRAIN = ("params", "lr", "weight_decay")  # set from the parameter groups and train.lr / weight_decay


def optimizer_class(path: str) -> type[torch.optim.Optimizer]:
    """The class named by `path`; raises ValueError when it is not an importable torch Optimizer."""
    module_name, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import {path!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"{path!r} is not a torch.optim.Optimizer")
    return cls


def unknown_arguments(function, kwargs: dict[str, Any], reserved: tuple[str, ...] = ()) -> list[str]:
    """Keys of `kwargs` that `function` does not take, or that are `reserved`."""
    parameters = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return [k for k in kwargs if k in reserved or not (takes_any or k in parameters)]


def check_optimization(cfg: DictConfig, sources: Sources) -> None:
    """train.optimizer and train.schedule, before any model loads."""
    optimizer, schedule = cfg.train.optimizer, cfg.train.schedule
    try:
        cls = optimizer_class(optimizer.class_path)
    except ValueError as err:
        raise ConfigError(f"{sources.of('train.optimizer.class_path')}: key 'train.optimizer.class_path': "
                          f"{err}") from None
    bad = unknown_arguments(cls.__init__, OmegaConf.to_container(optimizer.kwargs), FROM_TRAIN)
    if bad:
        raise ConfigError(f"{sources.of('train.optimizer.kwargs')}: key 'train.optimizer.kwargs.{bad[0]}': not an "
                          f"argument of {cls.__name__} here (params, lr and weight_decay come from train.*)")
    if schedule.name not in SCHEDULES:
        raise ConfigError(f"{sources.of('train.schedule.name')}: key 'train.schedule.name': {schedule.name!r} is "
                          f"not one of {', '.join(SCHEDULES)}")
    function = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(schedule.name)]
    bad = unknown_arguments(function, OmegaConf.to_container(schedule.kwargs),
                            ("optimizer", "num_warmup_steps", "num_training_steps"))
    if bad:
        raise ConfigError(f"{sources.of('train.schedule.kwargs')}: key 'train.schedule.kwargs.{bad[0]}': not an "
                          f"argument of the {schedule.name} schedule here")


def build_optimizer(groups: list[dict[str, Any]], train_cfg: DictConfig) -> torch.optim.Optimizer:
    """The configured optimizer on parameter `groups` (each with its own lr)."""
    cls = optimizer_class(train_cfg.optimizer.class_path)
    return cls(groups, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
               **OmegaConf.to_container(train_cfg.optimizer.kwargs))


def build_schedule(optimizer: torch.optim.Optimizer, train_cfg: DictConfig, total_steps: int):
    """The configured schedule over `total_steps` optimizer steps, warming up over warmup_ratio of them."""
    schedule = train_cfg.schedule
    return get_scheduler(schedule.name, optimizer, num_warmup_steps=int(train_cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps,
                         scheduler_specific_kwargs=OmegaConf.to_container(schedule.kwargs) or None)
