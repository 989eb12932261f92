"""SMoLoRA's router: what each forward's SMoLoRA layers route on (cvit.model.smolora.RoutingContext).

IF gate input per row: `paper` the embedding of the row's own format instruction (`templates` of the batch; no
task id, so unseen tasks and multi-type wordings route by what they say); `released` the task's row of a table
indexed by task (the released `ins_type`): a trained task's row embeds its instruction (the mean over its
templates, as the released multi-type table), an evaluation-only task uses the row of the trained task it is
mapped to. VU mean: `paper` over the prompt's real tokens (training: attention mask minus the answer; generation:
the prompt, and each layer's choice fixed at the prefill); `released` over every position in training (padding
included) and, in generation, over the prompt's real tokens at the prefill (the released evaluation runs one
question at a time: no padding) and each cached step's own token after it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch

from cvit.data.collate import IGNORE_INDEX
from cvit.methods.instruction_embeddings import InstructionEmbeddings
from cvit.model.routing import Router, RowGroups, whole_batch
from cvit.model.smolora import RoutingContext


def segments(batch: dict[str, Any]) -> torch.Tensor | None:
    """Each row's share of a 2-D vision input (Qwen2-VL: t*h*w of its image grid), or None."""
    grid = batch.get("image_grid_thw")
    return None if grid is None else grid.prod(-1)


class SMoLoRARouter(Router):
    def __init__(self, context: RoutingContext, embeddings: InstructionEmbeddings, routing: str,
                 task_rows: dict[str, torch.Tensor] | None = None) -> None:
        """`task_rows`: task name -> IF embedding (released routing only)."""
        self.context, self.embeddings, self.routing = context, embeddings, routing
        self.task_rows = task_rows or {}

    def instruction(self, batch: dict[str, Any]) -> torch.Tensor:
        """[B, 384] float32: each row's IF gate input."""
        if self.routing == "paper":
            return self.embeddings.of(list(batch["templates"]))
        unknown = sorted({t for t in batch["tasks"] if t not in self.task_rows})
        if unknown:
            raise KeyError(f"released SMoLoRA routing has no instruction row for task(s) {unknown}")
        return torch.stack([self.task_rows[t] for t in batch["tasks"]])

    def training(self, batch: dict[str, Any]) -> AbstractContextManager:
        """paper: the VU mean over the prompt's real tokens (the attention mask less the answer); released: over
        every position."""
        prompt = batch["attention_mask"].bool() & (batch["labels"] == IGNORE_INDEX)
        mask = prompt if self.routing == "paper" else None
        return self.context.inputs(self.instruction(batch), mask, segments(batch))

    def route(self, batch: dict[str, Any]) -> RowGroups:
        """The prompt's real tokens at the prefill (paper: the choice fixed for the generation; released: each
        cached step routes on its own token)."""
        context = self.context.inputs(self.instruction(batch), batch["attention_mask"].bool(), segments(batch),
                                      fix_vu=self.routing == "paper")
        return whole_batch(batch, context)
