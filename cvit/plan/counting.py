"""A method's adapter parameters through a stream, counted by running its own callbacks on a meta-device model.

A run records after each stage (cvit.run.loop): `trainable`, the parameters with requires_grad once the task-start
hooks ran (0 for a stage that does not train); `stored`, `AdapterPool.parameter_count()` (every adapter, the
methods' extras, the trained projector); `inference`, the router's `inference_parameters` plus the projector. The
plan computes the same numbers the same way: the pool is built as `ContinualModule` builds it (LoRA from
`model.lora`, the adapter layer type of the method's callbacks) on the meta device, and the task hooks of the
callbacks that own the pool, its layer type or the router run unchanged on every stage of `plan_stages`, with no
trainer (as in a zero-shot stage). Where a hook reads data it gets stand-ins: one record per task holding its
instruction templates, and constant features for a callback's feature `encoder` (cvit.model.encoders) and
`InstructionEmbeddings` (task embeddings, anchors, instruction rows): they set routing weights, never shapes. The
other callbacks (EMA, EWC, LwF, replay, recall) add losses, data or shadow copies, not adapter parameters, and are
not run.

Depth: every decoder layer has the same shapes, so once the layers a method singles out (HiDe's `top_layers`) are
distinct layers, each count is affine in the number of decoder layers. The stream runs at 2 and 3 decoder layers
(a one-layer vision tower, every width as published) and is extrapolated to the full depth: exact for methods that
single out at most two layers (tests/test_plan.py checks it against a full-depth run), and about 10x faster. A
method whose callbacks refuse the shallow model (a layer index past it) is counted at full depth.
"""

from __future__ import annotations

import dataclasses
from dataclasses import astuple, dataclass

import torch
from accelerate import init_empty_weights
from omegaconf import DictConfig
from peft import LoraConfig
from transformers import PretrainedConfig

from cvit.config.load import Sources
from cvit.config.registry import build_callbacks
from cvit.data.stream import Task
from cvit.errors import ConfigError
from cvit.methods.instruction_embeddings import InstructionEmbeddings
from cvit.model.build import FAMILIES
from cvit.model.mixing import decoder_layer_index, lora_layers
from cvit.model.moelora import MoELoRALinear
from cvit.model.pool import AdapterLayer, AdapterPool
from cvit.model.routing import Router
from cvit.model.smolora import INSTRUCTION_DIM, SMoLoRALinear
from cvit.plan.architecture import meta_model, with_depth
from cvit.run.loop import plan_stages

SHALLOW = 2  # decoder layers of the first shallow run (the second has one more)


@dataclass(frozen=True)
class StageCount:
    """Parameters after one stage, as a run's matrix.json `parameters` entry."""

    trainable: int
    stored: int
    inference: int


@dataclass(frozen=True)
class MethodCount:
    stages: list[StageCount]
    projector: int  # the trained projector's parameters, inside every count above (0 when frozen)
    # (in_features, rank) of each trainable adapter's LoRA module in one decoder layer, at the last training stage
    lora_inputs: tuple[tuple[int, int], ...]
    # in_features of each LoRA module in one decoder layer that the last training stage runs without training it
    frozen_inputs: tuple[int, ...] = ()
    # out_features of each LoRA module in one decoder layer whose output a trained weight scales in that stage
    weighted_outputs: tuple[int, ...] = ()
    # (in_features, rank) of each trainable MoELoRA module in one decoder layer (its router reads the input too)
    routed_inputs: tuple[tuple[int, int], ...] = ()
    # (out_features, rank) of each trainable SMoLoRA module in one decoder layer, one entry per branch it builds
    branch_outputs: tuple[tuple[int, int], ...] = ()
    # trainable adapter parameters in one decoder layer, at the last training stage
    layer_adapter_parameters: int = 0


class PlanModule(torch.nn.Module):
    """What the callbacks' hooks touch on a `ContinualModule`: the pool, its model and extras, the router."""

    def __init__(self, pool: AdapterPool) -> None:
        super().__init__()
        self.pool, self.model, self.extras = pool, pool.peft, pool.extras
        self.router = Router()

    def set_router(self, router: Router | None) -> None:
        self.router = router if router is not None else Router()


class PlanData:
    """What the hooks read of a `ContinualDataModule`: the tasks, their templates, one record per task. A task's
    templates are its configured ones, else (`benchmark.templates: as_is`) its first listed variant."""

    def __init__(self, stream: list[Task], unseen: list[Task], benchmark: DictConfig) -> None:
        self.stream, self.unseen = stream, unseen
        self.by_task = {t.name: list(t.templates) or first_variant(benchmark, t.name) for t in stream + unseen}

    @property
    def tasks(self) -> dict[str, Task]:
        return {t.name: t for t in self.stream + self.unseen}

    def templates(self, task: Task, indices=None, split: str = "train") -> list[str]:
        return list(self.by_task[task.name])

    def train_set(self, task: Task, loss_weight: float = 1.0) -> list[dict]:
        return [{"image": None, "instruction": " ".join(self.templates(task)), "answer": ""}]


def first_variant(benchmark: DictConfig, task: str) -> list[str]:
    """The first template variant listed for `task` in the benchmark spec (none for a task it does not define)."""
    spec = benchmark.tasks.get(task)
    return list(next(iter(spec.instructions.values()), [])) if spec is not None else []


class ConstantFeatures:
    """A stand-in feature encoder (`images`, `texts`) and instruction embedder (`of`): the same feature for every
    input, on the CPU."""

    def images(self, items: list) -> torch.Tensor:
        return torch.ones(len(items), 1)

    def texts(self, items: list) -> torch.Tensor:
        return torch.ones(len(items), 1)

    def of(self, texts: list[str]) -> torch.Tensor:
        return torch.ones(len(texts), INSTRUCTION_DIM)


def trainable_lora_inputs(pool: AdapterPool) -> tuple[tuple[int, int], ...]:
    """(in_features, rank) of each trainable adapter's LoRA module in decoder layer 0."""
    return tuple((layer.in_features, layer.r[adapter]) for name, layer in lora_layers(pool.peft).items()
                 if decoder_layer_index(name) == 0
                 for adapter, down in layer.lora_A.items() if down.weight.requires_grad)


def routed_lora_inputs(pool: AdapterPool) -> tuple[tuple[int, int], ...]:
    """(in_features, rank) of each trainable MoELoRA module in decoder layer 0."""
    return tuple((layer.in_features, layer.r[adapter]) for name, layer in lora_layers(pool.peft).items()
                 if decoder_layer_index(name) == 0 and isinstance(layer, MoELoRALinear)
                 for adapter, down in layer.lora_A.items() if down.weight.requires_grad)


def smolora_branch_outputs(pool: AdapterPool) -> tuple[tuple[int, int], ...]:
    """(out_features, rank) of each trainable SMoLoRA module in decoder layer 0, once per branch."""
    return tuple((layer.out_features, layer.r[adapter]) for name, layer in lora_layers(pool.peft).items()
                 if decoder_layer_index(name) == 0 and isinstance(layer, SMoLoRALinear)
                 for adapter, down in layer.lora_A.items() if down.weight.requires_grad
                 for _ in layer.options.branches)


def layer_adapter_parameters(pool: AdapterPool) -> int:
    """Trainable parameters of the LoRA modules (routers included) in decoder layer 0."""
    return sum(p.numel() for name, layer in lora_layers(pool.peft).items() if decoder_layer_index(name) == 0
               for p in layer.parameters() if p.requires_grad)


def frozen_lora_inputs(pool: AdapterPool, adapters: list[str]) -> tuple[int, ...]:
    """in_features of each LoRA module in decoder layer 0 of the `adapters` a training forward runs but does not
    train (their dropout still keeps a mask for backward)."""
    return tuple(layer.in_features for name, layer in lora_layers(pool.peft).items() if decoder_layer_index(name) == 0
                 for adapter, down in layer.lora_A.items() if adapter in adapters and not down.weight.requires_grad)


def weighted_lora_outputs(pool: AdapterPool, adapters: list[str]) -> tuple[int, ...]:
    """out_features of each LoRA module in decoder layer 0 of the `adapters` (their outputs, kept for the gradient
    of the weight that scales them)."""
    return tuple(layer.out_features for name, layer in lora_layers(pool.peft).items() if decoder_layer_index(name) == 0
                 for adapter in layer.lora_B if adapter in adapters)


def build_pool(model: DictConfig, config: PretrainedConfig, layer: AdapterLayer | None) -> AdapterPool:
    """The pool `ContinualModule` builds for `model` (a config's section) on the meta-device model of `config`; its
    adapters go to the meta device under accelerate's `init_empty_weights`."""
    lora = model.lora
    return AdapterPool(
        meta_model(config, model.family),
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules),
        projector=FAMILIES[model.family].projector if lora.train_projector else None, layer=layer,
    )


def use_constant_features(callback) -> None:
    """Give a callback the stand-in features where it would encode data (its lazily built feature `encoder`, its
    `InstructionEmbeddings`)."""
    if hasattr(callback, "encoder") and callback.encoder is None:
        callback.encoder = ConstantFeatures()
    if isinstance(getattr(callback, "embeddings", None), InstructionEmbeddings):
        callback.embeddings = ConstantFeatures()


def run_stream(cfg: DictConfig, sources: Sources, config: PretrainedConfig, stream: list[Task],
               unseen: list[Task]) -> MethodCount:
    """The method of `cfg` through `stream` on the architecture `config`, every count at that depth."""
    callbacks = build_callbacks(cfg.callbacks, sources, cfg.method.mode)
    for callback in callbacks.values():
        callback.check_model(config)
    layers = [layer for cb in callbacks.values() if (layer := cb.adapter_layer()) is not None]
    owners = [callback for callback in callbacks.values() if callback.owns]
    for callback in owners:
        use_constant_features(callback)
    with init_empty_weights():  # every parameter the pool and the hooks create goes to the meta device
        pool = build_pool(cfg.model, config, layers[0] if layers else None)
        module, data = PlanModule(pool), PlanData(stream, unseen, cfg.benchmark)
        stages, lora_inputs, frozen_inputs, weighted_outputs, routed_inputs, layer_parameters = [], (), (), (), (), 0
        branch_outputs = ()
        for stage in plan_stages(cfg.method.mode, stream):
            for callback in owners:
                callback.on_task_start(None, module, data, stage.task)
            trainable = sum(p.numel() for p in module.parameters() if p.requires_grad) if stage.trains else 0
            if stage.trains:
                lora_inputs = trainable_lora_inputs(pool)
                running = module.router.training_adapters(pool)
                frozen_inputs = frozen_lora_inputs(pool, running)
                weighted_outputs = weighted_lora_outputs(pool, running) if module.router.weighs_in_training() else ()
                routed_inputs, layer_parameters = routed_lora_inputs(pool), layer_adapter_parameters(pool)
                branch_outputs = smolora_branch_outputs(pool)
            for callback in owners:
                callback.on_task_end(None, module, data, stage.task)
            inference = module.router.inference_parameters(pool) + pool.projector_size
            stages.append(StageCount(trainable, pool.parameter_count(), inference))
    return MethodCount(stages, pool.projector_size, lora_inputs, frozen_inputs, weighted_outputs, routed_inputs,
                       branch_outputs, layer_parameters)


def count_method(cfg: DictConfig, sources: Sources, config: PretrainedConfig, stream: list[Task],
                 unseen: list[Task]) -> MethodCount:
    """`run_stream` at the full depth of `config`, extrapolated from two shallow depths (see the module's doc)."""
    layers = config.get_text_config().num_hidden_layers
    if layers <= SHALLOW + 1:
        return run_stream(cfg, sources, config, stream, unseen)
    try:
        low, high = (run_stream(cfg, sources, with_depth(config, depth), stream, unseen)
                     for depth in (SHALLOW, SHALLOW + 1))
    except ConfigError:  # e.g. a layer index past the shallow model; a real error is raised again at full depth
        return run_stream(cfg, sources, config, stream, unseen)
    extra = layers - SHALLOW
    stages = [StageCount(*(a + extra * (b - a) for a, b in zip(astuple(lo), astuple(hi), strict=True)))
              for lo, hi in zip(low.stages, high.stages, strict=True)]
    return dataclasses.replace(high, stages=stages)
