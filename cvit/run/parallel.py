"""Data parallelism through Lightning's strategies: which ones a continual run can use, this process's rank
before Lightning knows it, the trainer arguments, and the sharding and gathering the run does itself.

Every process holds the whole stream (records, callbacks, module). The train sampler and the test sets are
sharded here rather than by Lightning's DistributedSampler (`use_distributed_sampler=False`), so mid-epoch
resume keeps working and evaluation can be gathered back into the records' order without padding duplicates.
Only rank 0 writes the run directory; every rank reads it at resume.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from cvit.errors import ConfigError

# Strategies that start processes per `fit`: callback state and the run's Python objects would not survive one.
PER_FIT_PROCESSES = ("spawn", "fork", "notebook")
# Strategies under which a callback cannot read every parameter and its gradient whole at a step's end: FSDP and
# ZeRO-2/3 shard them across ranks, and every DeepSpeed engine zeroes the gradients inside its optimizer step,
# before `on_train_batch_end` (a per-step EMA would silently see zeros).
NO_WHOLE_GRADIENTS = ("fsdp", "deepspeed")


def check_strategy(train: Any, callbacks: dict[str, Any], origin_of) -> None:
    """Refuse, before the model loads, a strategy the continual loop cannot drive or this machine cannot run,
    and a callback that needs whole parameters and gradients (`ContinualCallback.whole_parameters`) under a
    sharding strategy. `origin_of(key)` names the file or command line that set a dotted key."""
    from lightning.pytorch.strategies import StrategyRegistry

    name = str(train.strategy)
    where = f"{origin_of('train.strategy')}: key 'train.strategy'"
    known = ["auto", *StrategyRegistry.available_strategies()]
    if name not in known:
        raise ConfigError(f"{where}: unknown strategy {name!r}; known: {', '.join(known)}")
    if any(part in name for part in PER_FIT_PROCESSES):
        raise ConfigError(f"{where}: {name!r} starts new processes at every fit, so the callbacks' state and the "
                          "run's progress would be lost between tasks; use 'ddp' (launched by Lightning, torchrun "
                          "or SLURM)")
    for key in ("devices", "num_nodes"):
        if int(train[key]) < 1:
            raise ConfigError(f"{origin_of(f'train.{key}')}: key 'train.{key}': must be >= 1, got {train[key]}")
    if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"{where}: {name!r} needs the deepspeed package (pip install deepspeed; it needs CUDA)")
    if name.startswith(("fsdp", "deepspeed")) and train.accelerator == "cpu":
        raise ConfigError(f"{where}: {name!r} needs a GPU, and train.accelerator is 'cpu' "
                          f"({origin_of('train.accelerator')}); use 'ddp' on CPUs")
    if name.startswith(NO_WHOLE_GRADIENTS):
        for key, callback in callbacks.items():
            if getattr(callback, "whole_parameters", False):
                raise ConfigError(
                    f"{where}: {name!r} shards parameters or gradients across ranks or clears the gradients inside "
                    f"its step, and callback '{key}' ({type(callback).__name__}, {origin_of(f'callbacks.{key}')}) "
                    "reads every trainable parameter and its gradient whole after each step; use 'ddp', or drop it"
                )


def trainer_arguments(train: Any) -> dict[str, Any]:
    """The Lightning Trainer arguments that place a run's processes."""
    return {
        "accelerator": train.accelerator, "devices": int(train.devices), "num_nodes": int(train.num_nodes),
        "strategy": train.strategy, "use_distributed_sampler": False,
    }


def world_size(train: Any) -> int:
    return int(train.devices) * int(train.num_nodes)


def launch_rank(train: Any) -> int:
    """This process's global rank from the launcher's environment, before any trainer has set up: torchrun's
    RANK, Lightning's own launcher (NODE_RANK, LOCAL_RANK; its main process has neither), or SLURM's
    SLURM_PROCID."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "LOCAL_RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return int(os.environ.get("NODE_RANK", 0)) * int(train.devices) + int(os.environ.get("LOCAL_RANK", 0))
    return int(os.environ["SLURM_PROCID"])


def distributed() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def every_rank_here() -> None:
    """Wait until every rank has reached this call (no-op in one process)."""
    if distributed()[1] > 1:
        dist.barrier()


def shard(size: int, rank: int, world: int) -> list[int]:
    """The positions 0..size-1 that rank `rank` of `world` takes: every world-th one, from `rank` (uneven
    shards, no padding)."""
    return list(range(rank, size, world))


def gather_objects(local: Any) -> list[Any]:
    """Every rank's `local` (picklable), by rank, on every rank; [local] in a single process."""
    world = distributed()[1]
    if world == 1:
        return [local]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, local)
    return gathered


def gather_in_order(local: list[Any]) -> list[Any]:
    """Every rank's `shard` of a sequence gathered back into its original order (on every rank)."""
    world = distributed()[1]
    if world == 1:
        return list(local)
    shards: list[Sequence[Any]] = gather_objects(local)
    size = sum(len(part) for part in shards)
    ordered: list[Any] = [None] * size
    for owner, part in enumerate(shards):
        for position, value in zip(shard(size, owner, world), part, strict=True):
            ordered[position] = value
    return ordered


def mean_over_ranks(tensors: Sequence[torch.Tensor]) -> None:
    """Replace each of `tensors` (floating point) in place by its mean over the ranks (unchanged in one process)."""
    world = distributed()[1]
    for tensor in tensors if world > 1 else ():
        dist.all_reduce(tensor)
        tensor.div_(world)


def broadcast_from_zero(tensors: Sequence[Any]) -> None:
    """Overwrite `tensors` in place with rank 0's (no-op in a single process): a decision or statistic computed on
    every rank from the same inputs, made bit-identical where accelerator arithmetic need not be deterministic."""
    if distributed()[1] == 1:
        return
    # NCCL moves CUDA tensors only; gloo, CPU and CUDA ones
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    for tensor in tensors:
        moved = tensor if device is None else tensor.to(device)
        dist.broadcast(moved, src=0)
        if moved is not tensor:
            tensor.copy_(moved)
