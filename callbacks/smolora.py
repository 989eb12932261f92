"""SMoLoRA (Wang et al.): a separable mixture of LoRA experts, a visual-understanding branch routed by the layer's
input and an instruction-following branch routed by the instruction's sentence embedding, fused per token
(cvit.model.smolora). One SMoLoRA adapter is trained through the whole stream: the gates learn on the first task
and are frozen after it; experts and fusion heads train on every task.

Routing `paper` (default): what the method claims (gates that learn through a straight-through top-1, the IF
route from each instance's own instruction, the VU mean over the prompt's real tokens fixed for a whole
generation). Routing `released`: what the authors' code does (gates that receive no gradient, the IF embedding
chosen by task, with `unseen_tasks` mapping each evaluation-only task to a trained one, or to itself for a row of
its own, as the released eval scripts' --ins-type do by hand (a task not listed takes the trained task whose
instruction embedding is closest), the VU mean
over every position, padding included, and per token in cached decoding; its gates are frozen from the start,
which changes nothing but the trainable count, as they receive no gradient). `branches: [vu]` / `[if]` are the
single-branch ablations (no fusion heads).

Targets (default): the language model's MLP linears and the multimodal projector's two linears. After each task
the routing is probed on the prompts of up to `probe_samples` test items of every evaluated task: alpha/beta per
layer and the experts each task chooses go to `smolora/<k>_<task>/` (routing.json, alpha_beta.png,
expert_usage.png) and to TensorBoard (figures `smolora/alpha_beta`, `smolora/expert_usage`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from cvit.callbacks.base import ContinualCallback, Shared

from cvit.config.registry import register_callback
from cvit.errors import ConfigError
from cvit.methods.instruction_embeddings import InstructionEmbeddings, require_sentence_model
from cvit.methods.smolora_routing import SMoLoRARouter
from cvit.methods.smolora_stats import RoutingStats
from cvit.model.build import model_class
from cvit.model.encoders import to_accelerator
from cvit.model.smolora import GATES, RoutingContext, SMoLoRAOptions, SMoLoRAType, attach
from cvit.run.atomic import write_json, write_with
from cvit.run.rundir import stage_name

# model_type -> the language model's MLP linears and the projector's two linears
DEFAULT_TARGETS = {
    "llava": r".*language_model.*\.(gate_proj|up_proj|down_proj)|.*multi_modal_projector\.(linear_1|linear_2)",
    "qwen2_vl": r".*language_model.*\.(gate_proj|up_proj|down_proj)|.*visual\.merger\.mlp\.(0|2)",
}
MODEL_FAMILY = {"llava": "llava", "qwen2_vl": "qwen2_vl"}


def check_targets(model_config: Any, pattern: str, key: str) -> None:
    """Every module `pattern` matches (peft's full match on module names) is a Linear, and one at least: checked on
    the model built on the meta device (no weights)."""
    cls = model_class(MODEL_FAMILY[model_config.model_type])
    with torch.device("meta"):
        model = cls(model_config)
    matched = {name: m for name, m in model.named_modules() if re.fullmatch(pattern, name)}
    if not matched:
        raise ConfigError(f"key '{key}': {pattern!r} matches no module of the model")
    wrong = [f"{name} ({type(m).__name__})" for name, m in matched.items() if not isinstance(m, torch.nn.Linear)]
    if wrong:
        raise ConfigError(f"key '{key}': SMoLoRA layers replace Linear modules only; not a Linear: {wrong[:3]}")


@register_callback("smolora")
class SMoLoRA(ContinualCallback):
    owns = (Shared.ADAPTER_LAYER, Shared.ROUTER)

    def __init__(self, routing: str = "paper", experts: int = 8, r: int = 128, alpha: int = 256,
                 branches: list[str] | None = None, target_modules: str | None = None,
                 unseen_tasks: dict[str, str] | None = None, probe_samples: int = 32) -> None:
        """`experts` over the branches present (8: 4 VU + 4 IF); `r` the total rank over the experts (each r /
        experts), `alpha` its LoRA alpha (scaling alpha / r); `target_modules` a regex on module names (None: the
        default above); `unseen_tasks` {evaluation-only task: trained task, or itself} (released routing)."""
        self.options = SMoLoRAOptions(experts, tuple(branches or ("vu", "if")), routing)
        if r % experts:
            raise ValueError(f"r={r} does not divide into {experts} experts")
        if "if" in self.options.branches:
            require_sentence_model()
        self.r, self.alpha, self.target_modules = r, alpha, target_modules
        self.unseen_tasks = dict(unseen_tasks or {})
        self.probe_samples = probe_samples
        self.context = RoutingContext()
        self.embeddings = InstructionEmbeddings()
        self.tasks_done = 0

    def check_model(self, model_config) -> None:
        if model_config.model_type not in DEFAULT_TARGETS:
            raise ConfigError(f"SMoLoRA supports model types {sorted(DEFAULT_TARGETS)}, "
                              f"not {model_config.model_type!r}")
        if self.target_modules is None:
            self.target_modules = DEFAULT_TARGETS[model_config.model_type]
        check_targets(model_config, self.target_modules, f"callbacks.{self.config_key}.target_modules")

    def adapter_layer(self) -> SMoLoRAType:
        if self.target_modules is None:
            raise ConfigError("SMoLoRA's target_modules are chosen by check_model, before the model loads")
        return SMoLoRAType(self.options, self.r, self.alpha, self.target_modules)

    def task_rows(self, datamodule) -> dict[str, torch.Tensor]:
        """Released routing: task name -> IF embedding (a trained task's own, an unseen task's mapped one)."""
        def embedding(task) -> torch.Tensor:
            split = "test" if task.unseen else "train"
            templates = list(task.templates) or sorted(set(datamodule.templates(task, split=split)))
            return self.embeddings.of(templates).mean(0)

        tasks = datamodule.tasks
        trained = {name: embedding(t) for name, t in tasks.items() if not t.unseen}
        rows = dict(trained)
        for name, task in tasks.items():
            if not task.unseen:
                continue
            own = embedding(task)
            target = self.unseen_tasks.get(name)
            if target == name:  # a row of its own (the released Places365 row)
                rows[name] = own
                continue
            if target is None:
                target = max(trained, key=lambda t: torch.cosine_similarity(own, trained[t], 0).item())
            if target not in trained:
                raise ConfigError(f"key 'callbacks.{self.config_key}.unseen_tasks.{name}': {target!r} is not a "
                                  f"trained task ({', '.join(trained)}) nor {name!r} itself")
            rows[name] = trained[target]
        return rows

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        attach(module.model, self.context)
        rows = self.task_rows(datamodule) if self.options.routing == "released" else None
        module.set_router(SMoLoRARouter(self.context, self.embeddings, self.options.routing, rows))
        if self.tasks_done or self.options.routing == "released":  # released gates never get a gradient
            module.pool.freeze_parts(list(GATES))

    def on_task_end(self, trainer, module, datamodule, task) -> None:
        index = self.tasks_done
        self.tasks_done += 1
        if trainer is not None and self.probe_samples > 0:
            self.probe(trainer, module, datamodule, index, task)

    @staticmethod
    def probed_tasks(datamodule) -> list:
        """The tasks evaluated after this stage: every stream task up to the stage's last, and the unseen ones."""
        last = max(t.index for t in datamodule.stage)
        return [t for t in datamodule.stream if t.index <= last] + list(datamodule.unseen)

    @torch.no_grad()
    def probe(self, trainer, module, datamodule, index: int, task) -> None:
        """Record alpha/beta and expert usage on test prompts of every evaluated task; write and log them."""
        from cvit.module import model_inputs  # cvit.module imports the callbacks package

        to_accelerator(module, trainer)
        stats = RoutingStats(self.options.per_branch)
        was_training = module.training
        module.eval()
        self.context.recorder = stats
        try:
            for probed in self.probed_tasks(datamodule):
                stats.task, seen = probed.name, 0
                for batch in datamodule.test_dataloader(probed):
                    batch = module.transfer_batch_to_device(batch, module.device, 0)
                    for _, context in module.router.route(batch):
                        with context, trainer.precision_plugin.forward_context():  # as training routes (autocast)
                            module.model(**model_inputs(batch))
                    seen += len(batch["input_ids"])
                    if seen >= self.probe_samples:
                        break
        finally:
            self.context.recorder = None
            module.train(was_training)
        if trainer.is_global_zero:  # every rank probes the same items; one writes
            self.write(trainer, stats, stage_name(index, task.name), index)

    def write(self, trainer, stats: RoutingStats, stage: str, index: int) -> None:
        out = Path(trainer.default_root_dir) / "smolora" / stage
        write_json(out / "routing.json", stats.summary())
        figures = {"alpha_beta": stats.alpha_figure(stage), "expert_usage": stats.usage_figure(stage)}
        experiment = getattr(trainer.logger, "experiment", None)
        import matplotlib.pyplot as plt

        for name, fig in figures.items():
            if fig is None:
                continue
            write_with(out / f"{name}.png", lambda path, f=fig: f.savefig(path, format="png", dpi=120))
            if experiment is not None:
                experiment.add_figure(f"smolora/{name}", fig, global_step=index, close=False)
            plt.close(fig)

    def state_dict(self) -> dict[str, Any]:
        return {"tasks_done": self.tasks_done, "embeddings": self.embeddings.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tasks_done = state.get("tasks_done", 0)
        self.embeddings.load_state_dict(state.get("embeddings", {}))
