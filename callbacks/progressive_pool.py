"""ProgLoRA's progressive LoRA pool with task-aware allocation (proglora.txt Sec. 4; math in
`cvit.methods.allocation`).

  on_task_start  task i gets a new, freshly initialised LoRA block (the first task uses the pool's initial
                 adapter); earlier blocks are frozen. The task's mean image / instruction / answer embeddings
                 are computed from up to `embedding_samples` of its training records with the pluggable
                 encoder (`cvit.model.encoders`), giving the similarity weights w_{p,i} of Eq. 3
                 (`weights: uniform` fuses with weight 1 instead: the Table 3 ablation; recall still sizes
                 its replay by similarity). With `allocation: static` the training forward uses the fused
                 block BLK_i + sum_p w_{p,i} BLK_p; with `dynamic`, a new key is added for the block (earlier
                 keys frozen, the projector keeps training) and every forward mixes all blocks with the
                 per-instance weights of Eq. 5-7. A fused block is the weighted sum of the blocks' outputs,
                 sum_p w_p B_p A_p x (the blocks as experts, as the released dynamic code weights each LoRA's
                 output); Eq. 3 / 7's "theta = sum w theta" read literally as a sum of A and B matrices would
                 instead give (sum w B)(sum w A) with cross terms.
  routing        static: each test instance uses the fused block of its own task (task identity is known;
                 an unseen task uses the latest task's); dynamic: per-instance weights, in one batch.
The router installed on the module (`AllocationRouter`) also serves the recall callback (`task_recall`):
the similarity weights of the running task and the allocation of pooled instruction embeddings.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from cvit.callbacks.base import Capability, ContinualCallback, Shared

from cvit.config.registry import register_callback
from cvit.methods.allocation import ALLOCATOR_FORMS, DynamicAllocator, max_pool, similarity_weight
from cvit.model.encoders import (
    CHUNK,
    build_encoder,
    mean_embeddings,
    multimodal_embeddings,
    to_accelerator,
    token_embeddings,
)
from cvit.model.mixing import mixed
from cvit.model.pool import indexed_adapter
from cvit.model.routing import Router, RowGroups, rows_by_key, whole_batch
from cvit.run.parallel import broadcast_from_zero

ALLOCATOR = "allocation"  # the dynamic allocator's name among the pool's extras


def block_name(index: int) -> str:
    return indexed_adapter(index, "block")


class AllocationRouter(Router):
    """Forwards through the fused LoRA block. `similarity[t]` holds the task similarity w_{p,t} of every earlier
    task p (what recall sizes its replay with); `fused[t]` the weights of the earlier blocks in task t's fused
    block (the similarity, or 1 for the w = 1 ablation; its own block has weight 1); `allocator` is the
    dynamic allocator, or None for static allocation; `form` the allocator's form, which also says what x_max
    pools (`paper`: the instruction's input embeddings; `released`: the whole multimodal input)."""

    def __init__(self, module, tasks: list[str], similarity: dict[str, list[float]], fused: dict[str, list[float]],
                 allocator: DynamicAllocator | None, form: str = "paper") -> None:
        self.module, self.tasks, self.similarity, self.fused = module, tasks, similarity, fused
        self.allocator, self.form = allocator, form

    @property
    def blocks(self) -> list[str]:
        return [block_name(i) for i in range(len(self.tasks))]

    def static_weights(self, task: str) -> dict[str, float]:
        """The fused block of `task` (a task without a block: the latest task's)."""
        task = task if task in self.tasks else self.tasks[-1]
        weights = [*self.fused[task], 1.0]  # blocks after the task's own are not used
        return dict(zip(self.blocks[: len(weights)], weights, strict=True))

    def pooled(self, batch: dict[str, Any]) -> torch.Tensor:
        """[B, d] x_max of Eq. 5 for a collated batch: the max over its instructions' input embeddings (`paper`) or
        over every position of its multimodal input (`released`: image features, prompt and, in a training batch,
        the answer; padding left out)."""
        if self.form == "released":
            return max_pool(*multimodal_embeddings(self.module, batch))
        return max_pool(*token_embeddings(self.module, batch["instructions"]))

    def pooled_records(self, datamodule, task, indices: list[int]) -> torch.Tensor:
        """[N, d] x_max of a task's training records `indices`, collated as training batches (task recall's)."""
        if self.form == "paper":
            return max_pool(*token_embeddings(self.module, datamodule.instructions(task, indices)))
        records = datamodule.train_set(task)
        return torch.cat([self.pooled(datamodule.collator.train_batch([records[i] for i in indices[j:j + CHUNK]]))
                          for j in range(0, len(indices), CHUNK)])

    def allocate(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, n] dynamic weights over the blocks in the pool."""
        return self.allocator(pooled)

    @contextmanager
    def mixing(self, batch: dict[str, Any], task: str | None = None):
        if self.allocator is None:
            weights = self.static_weights(task)
        else:
            rows = self.allocate(self.pooled(batch))
            weights = {block: rows[:, n] for n, block in enumerate(self.blocks)}
        with mixed(self.module.pool.peft, weights):
            yield

    def training(self, batch: dict[str, Any]):
        return self.mixing(batch, self.tasks[-1])

    def training_adapters(self, pool) -> list[str]:
        return list(self.blocks) if self.allocator is not None else list(self.static_weights(self.tasks[-1]))

    def weighs_in_training(self) -> bool:
        return self.allocator is not None

    def inference_parameters(self, pool) -> int:
        return pool.parameter_count(self.blocks) + pool.extras_size  # every block, and the dynamic allocator

    def route(self, batch: dict[str, Any]) -> RowGroups:
        if self.allocator is not None:
            return whole_batch(batch, self.mixing(batch))
        return [(rows, self.mixing(batch, task)) for task, rows in rows_by_key(batch["tasks"]).items()]


@register_callback("progressive_pool")
class ProgressiveLoRAPool(ContinualCallback):
    owns = (Shared.ADAPTER_POOL, Shared.ROUTER)
    sequential_only = True

    def __init__(
        self, allocation: str = "static", weights: str = "similarity", projector_dim: int = 100,
        temperature: float = 0.0, allocator: str = "paper", image_encoder: str = "mllm", text_encoder: str = "mllm",
        clip_path: str = "", embedding_samples: int = 500, seed: int = 0,
    ) -> None:
        if allocation not in ("static", "dynamic"):
            raise ValueError(f"allocation must be static or dynamic, got {allocation!r}")
        if allocator not in ALLOCATOR_FORMS:
            raise ValueError(f"allocator must be one of {', '.join(ALLOCATOR_FORMS)}, got {allocator!r}")
        self.form = allocator
        if weights not in ("similarity", "uniform"):
            raise ValueError(f"weights must be similarity or uniform, got {weights!r}")
        self.allocation, self.weights = allocation, weights
        self.projector_dim, self.temperature = projector_dim, temperature
        self.encoders = {"image": image_encoder, "text": text_encoder, "clip_path": clip_path or None}
        self.embedding_samples, self.seed = embedding_samples, seed
        self.tasks: list[str] = []
        self.embeddings: dict[str, dict[str, torch.Tensor]] = {}
        self.similarity: dict[str, list[float]] = {}  # task -> w_{p,task} for its earlier tasks p
        self.encoder = None

    def provides(self) -> tuple[str, ...]:
        dynamic = (Capability.DYNAMIC_ALLOCATION,) if self.allocation == "dynamic" else ()
        return (Capability.ALLOCATION, *dynamic)

    def on_task_start(self, trainer, module, datamodule, task) -> None:
        index = len(self.tasks)
        module.pool.train_only(block_name(index))
        self.tasks.append(task.name)
        if self.encoder is None:
            self.encoder = build_encoder(module, self.encoders["image"], self.encoders["text"],
                                         self.encoders["clip_path"])
        to_accelerator(module, trainer)
        current = mean_embeddings(self.encoder, datamodule.train_set(task), self.embedding_samples,
                                  self.seed + index)
        self.embeddings[task.name] = current
        # the recall counts round((1 - w) phi) are discrete: rank 0's embeddings decide for every rank
        broadcast_from_zero([e for task_embeddings in self.embeddings.values() for e in task_embeddings.values()])
        self.similarity[task.name] = [similarity_weight(self.embeddings[p], current) for p in self.tasks[:-1]]
        fused = {t: w if self.weights == "similarity" else [1.0] * len(w) for t, w in self.similarity.items()}
        module.set_router(AllocationRouter(module, list(self.tasks), self.similarity, fused, self.allocator(module),
                                           self.form))

    def allocator(self, module) -> DynamicAllocator | None:
        """The dynamic allocator with a trainable key for the new block (earlier keys frozen), or None."""
        if self.allocation != "dynamic":
            return None
        if ALLOCATOR not in module.pool.extras:
            dim = module.pool.peft.get_input_embeddings().weight.shape[1]
            restoring = len(self.tasks) > 1  # the run resumes: the saved stage holds the allocator's weights
            with torch.random.fork_rng(enabled=restoring):  # a restored allocator draws no random numbers
                allocator = DynamicAllocator(dim, self.projector_dim, self.temperature, self.form)
                for _ in range(len(self.tasks) - 1):
                    allocator.add_key()
                module.pool.add_extra(ALLOCATOR, allocator)
        allocator = module.pool.extras[ALLOCATOR]
        for key in allocator.keys:
            key.requires_grad_(False)
        allocator.add_key()
        return allocator

    def state_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "embeddings": self.embeddings, "similarity": self.similarity}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tasks = list(state_dict.get("tasks", []))
        self.embeddings = dict(state_dict.get("embeddings", {}))
        self.similarity = dict(state_dict.get("similarity", {}))
