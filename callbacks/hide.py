"""HiDe-LLaVA: task anchors, top-layer expansion routed by the anchors, fusion of the other layers
(hide-llava.txt Sec. 4.2, Eq. 2-7).

  on_task_start  task t trains a new, freshly initialised LoRA E_t alone (the first task uses the pool's
                 initial adapter); the earlier ones are out of the forward, so they receive no gradient.
  on_task_end    the task's anchors (Eq. 2): its mean image and mean instruction features over up to
                 `anchor_samples` training records, from the pluggable encoder (`cvit.model.encoders`; with
                 `text_encoder: clip`, `text_features: released` (default) reads the text tower's pooler output
                 as the released code's `CLIPTextModel` does, `projected` CLIP's projected text embedding: the
                 paper says neither);
                 then every learned LoRA is fused into the adapter `fused` (Eq. 6, through peft's
                 `add_weighted_adapter`) with coefficient c = `epsilon` (paper: 1.0), or c = `epsilon / T` over
                 T learned tasks with `average: true` (not in the paper). `fusion: linear` (released code,
                 `clitmoelora.py`) applies c to A and B separately: (sum_i c B_i)(sum_i c A_i), so c enters
                 twice (c^2 on each product, cross terms B_i A_j included) and `average` is the plain average of
                 the A and of the B matrices; `cat` applies c to each product: the exact sum_i c B_i A_i of Eq. 6
                 read as a sum of weight deltas, at T times the rank. Fig. 5 sweeps c: `callbacks.hide.epsilon=`.
                 `linear` is the default although it is the released arithmetic: Eq. 6 cites task arithmetic and
                 reads as `cat`, but the paper's own Table 3 counts (Merge (1-32) x0.86 of HiDe, i.e. one LoRA's
                 size) fit only a same-rank merge; a rank-T `cat` adapter would load T LoRAs' parameters.
  routing        per instance d = softmax((alpha r_v + beta r_ins) / T) over the learned tasks, r = cosine
                 similarity of the instance's image / instruction features to each task's anchors (Eq. 3-4).
                 `layout` says what each decoder layer runs at inference (`top_layers`, default the last):
                   hide               top: sum_c d_c E_c(h) (Eq. 5); the rest: the fused LoRA (Eq. 7)
                   merge_all          every layer: the fused LoRA (no routing)
                   merge_all_but_top  the rest: fused; top: the latest task's LoRA alone (Table 3 "Merge (1-31)")
                   expand_all         every layer: sum_c d_c E_c(h) (Table 3 "Expand (1-32)")
                   expand_all_but_top the rest: sum_c d_c E_c(h); top: fused (Table 3 "Expand (1-31)"; the table
                                      does not say what the top runs: the fusion, as the other layers of HiDe)
The router reports the LoRA parameters each layout loads at inference (`inference_parameters`).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from cvit.callbacks.base import ContinualCallback, Shared

from cvit.config.registry import register_callback
from cvit.errors import ConfigError
from cvit.model.encoders import CLIP_TEXT_FEATURES, build_encoder, mean_embeddings, to_accelerator
from cvit.model.mixing import layers_in, mixed
from cvit.model.pool import indexed_adapter
from cvit.model.routing import Router, RowGroups, whole_batch

FUSED = "fused"
LAYOUTS = ("hide", "merge_all", "merge_all_but_top", "expand_all", "expand_all_but_top")


def expert_name(index: int) -> str:
    return indexed_adapter(index, "task")


def routing_weights(image: torch.Tensor, text: torch.Tensor, anchors: list[dict[str, torch.Tensor]],
                    alpha: float, beta: float, temperature: float) -> torch.Tensor:
    """Eq. 3-4: [B, d_v] image and [B, d_t] instruction features vs each task's anchors -> [B, tasks] weights."""
    image_anchors = torch.stack([a["image"] for a in anchors]).to(image.device)
    text_anchors = torch.stack([a["instruction"] for a in anchors]).to(text.device)
    r_v = F.cosine_similarity(image[:, None], image_anchors[None], dim=-1)
    r_ins = F.cosine_similarity(text[:, None], text_anchors[None], dim=-1)
    return ((alpha * r_v + beta * r_ins) / temperature).softmax(-1)


class DecouplingRouter(Router):
    """Inference of a HiDe layout; one group per batch with per-row expert weights."""

    def __init__(self, callback: HiDeLLaVA, module) -> None:
        self.hide, self.module = callback, module
        peft = module.pool.peft
        layers = module.pool.peft.get_base_model().config.get_text_config().num_hidden_layers
        self.top = layers_in(peft, [i % layers for i in callback.top_layers])
        self.rest = [name for name in layers_in(peft, None) if name not in self.top]
        self.experts = [expert_name(i) for i in range(len(callback.tasks))]

    def parts(self) -> list[tuple[list[str], list[str], bool]]:
        """The layout as (adapters, LoRA layers, routed) parts: routed parts mix their adapters with the
        per-instance weights, the others run their one adapter with weight 1."""
        everything, experts = self.rest + self.top, self.experts
        return {
            "hide": [([FUSED], self.rest, False), (experts, self.top, True)],
            "merge_all": [([FUSED], everything, False)],
            "merge_all_but_top": [([FUSED], self.rest, False), (experts[-1:], self.top, False)],
            "expand_all": [(experts, everything, True)],
            "expand_all_but_top": [(experts, self.rest, True), ([FUSED], self.top, False)],
        }[self.hide.layout]

    def weights(self, batch: dict[str, Any]) -> torch.Tensor:
        """[B, tasks] routing weights of the batch's rows."""
        encoder = self.hide.encoder
        return routing_weights(encoder.images(batch["images"]), encoder.texts(batch["instructions"]),
                               [self.hide.anchors[t] for t in self.hide.tasks], self.hide.alpha, self.hide.beta,
                               self.hide.temperature)

    @contextmanager
    def mixing(self, batch: dict[str, Any]):
        parts = self.parts()
        routed = self.weights(batch) if any(routed for _, _, routed in parts) else None
        with ExitStack() as stack:
            for adapters, layers, is_routed in parts:
                weights = {a: routed[:, c] if is_routed else 1.0 for c, a in enumerate(adapters)}
                stack.enter_context(mixed(self.module.pool.peft, weights, layers))
            yield

    def route(self, batch: dict[str, Any]) -> RowGroups:
        return whole_batch(batch, self.mixing(batch))

    def inference_parameters(self, pool) -> int:
        return sum(pool.parameter_count(adapters, set(layers)) for adapters, layers, _ in self.parts())


@register_callback("hide")
class HiDeLLaVA(ContinualCallback):
    task_end_weights = "reads"
    owns = (Shared.ADAPTER_POOL, Shared.ROUTER)
    sequential_only = True

    def __init__(
        self, layout: str = "hide", top_layers: list | None = None, fusion: str = "linear", epsilon: float = 1.0,
        average: bool = False, temperature: float = 0.1, alpha: float = 0.5, beta: float = 0.5,
        image_encoder: str = "mllm", text_encoder: str = "mllm", clip_path: str = "", text_features: str = "released",
        anchor_samples: int = 500, seed: int = 0,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if fusion not in ("linear", "cat"):
            raise ValueError(f"fusion must be linear or cat, got {fusion!r}")
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        if epsilon <= 0:
            raise ValueError("epsilon must be > 0 (linear fusion puts it on A and B: its sign would cancel)")
        self.layout, self.fusion, self.epsilon, self.average = layout, fusion, epsilon, average
        self.top_layers = [int(i) for i in (top_layers if top_layers is not None else [-1])]
        self.temperature, self.alpha, self.beta = temperature, alpha, beta
        if text_features not in CLIP_TEXT_FEATURES:
            raise ValueError(f"text_features must be one of {', '.join(CLIP_TEXT_FEATURES)}, got {text_features!r}")
        self.encoders = {"image": image_encoder, "text": text_encoder, "clip_path": clip_path or None,
                         "clip_text_features": text_features}
        self.anchor_samples, self.seed = anchor_samples, seed
        self.tasks: list[str] = []
        self.anchors: dict[str, dict[str, torch.Tensor]] = {}
        self.encoder = None

    def check_model(self, model_config) -> None:
        layers = model_config.get_text_config().num_hidden_layers
        wrong = [i for i in self.top_layers if not -layers <= i < layers]
        if wrong:
            raise ConfigError(f"key 'callbacks.{self.config_key}.top_layers': {wrong} outside the model's "
                              f"{layers} decoder layers (0..{layers - 1}, or -{layers}..-1)")

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        module.pool.train_only(expert_name(len(self.tasks)))

    def on_task_end(self, trainer, module, datamodule, task) -> None:
        if self.encoder is None:
            self.encoder = build_encoder(module, self.encoders["image"], self.encoders["text"],
                                         self.encoders["clip_path"], self.encoders["clip_text_features"])
        to_accelerator(module, trainer)
        self.anchors[task.name] = mean_embeddings(self.encoder, datamodule.train_set(task), self.anchor_samples,
                                                  self.seed + task.index, ("image", "instruction"))
        self.tasks.append(task.name)
        self.install(module)

    def install(self, module) -> None:
        """Fuse the learned LoRAs (when the layout uses the fusion) and install the router."""
        experts = [expert_name(i) for i in range(len(self.tasks))]
        if self.layout != "expand_all":
            coefficient = self.epsilon / len(experts) if self.average else self.epsilon
            # peft's linear fusion scales A and B by sqrt(w) each, so w = c^2 puts c on each, as the released code
            weight = coefficient**2 if self.fusion == "linear" else coefficient
            module.pool.fuse(FUSED, experts, [weight] * len(experts), self.fusion)
        module.set_router(DecouplingRouter(self, module))

    def state_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "anchors": self.anchors}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tasks = list(state_dict.get("tasks", []))
        self.anchors = dict(state_dict.get("anchors", {}))
