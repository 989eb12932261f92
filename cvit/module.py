"""The LightningModule wrapping an MLLM with its adapter pool.

Loss: cross-entropy on answer tokens only (labels = -100 elsewhere), each sample weighted by its
`loss_weight` (replay), plus every callback's `training_loss` terms. Generation: greedy, batched,
left-padded. A router installed with `set_router` (cvit.model.routing) sets the adapters of every
forward: each training batch runs in its `training(batch)` context, opened at the batch's start and closed
at its end, so backward (and gradient checkpointing's recomputation in it) sees the same adapters as the
forward; generation splits a batch into its `route(batch)` groups, each generated under its own adapter
setting (per-instance routing that keeps evaluation batched).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from peft import LoraConfig

from cvit.callbacks.base import ContinualCallback
from cvit.data.collate import IGNORE_INDEX
from cvit.model.batching import select_rows
from cvit.model.build import FAMILIES, load_mllm
from cvit.model.pool import AdapterLayer, AdapterPool
from cvit.model.routing import Router
from cvit.run.optimization import build_optimizer, build_schedule
from cvit.run.parallel import distributed, gather_objects, mean_over_ranks

MODEL_INPUTS = (
    "input_ids", "attention_mask", "pixel_values", "image_grid_thw", "image_sizes", "mm_token_type_ids"
)


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The entries of a collated batch that the model's forward takes."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens, tokens weighted by their sample's weight.

    logits [B, L, V], labels [B, L] (IGNORE_INDEX off-answer), weights [B] -> scalar. Only the answer
    positions are cast to fp32 (a full-vocabulary fp32 copy of all logits would cost GBs on real models).
    `tokens`: the mean's denominator (default: this batch's answer tokens); under data parallelism the
    `rank_share_of_tokens`, so that DDP's average of the ranks' gradients is the gradient of the mean over
    every rank's tokens, as one process at the global batch takes it.
    """
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    token_loss = F.cross_entropy(logits[:, :-1][mask].float(), labels[mask], reduction="none")
    token_weights = weights[:, None].expand_as(labels)[mask].to(token_loss.dtype)
    return (token_loss * token_weights).sum() / (mask.sum().clamp(min=1) if tokens is None else tokens)


def rank_share_of_tokens(labels: torch.Tensor) -> torch.Tensor | None:
    """The answer tokens of [B, L] `labels` averaged over the ranks (a float scalar; a collective, so every rank
    calls it at the same step), or None in a single process."""
    if distributed()[1] == 1:
        return None
    tokens = (labels[:, 1:] != IGNORE_INDEX).sum().float()
    mean_over_ranks([tokens])
    return tokens.clamp(min=1)


class ContinualModule(L.LightningModule):
    def __init__(self, model_cfg: Any, train_cfg: Any, layer: AdapterLayer | None = None) -> None:
        """`layer`: a custom LoRA layer type for the pool's adapters (a method's, e.g. SMoLoRA's); None: peft's."""
        super().__init__()
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        base, self.processor = load_mllm(
            model_cfg.family, model_cfg.path, model_cfg.quantization, model_cfg.compute_dtype,
            model_cfg.gradient_checkpointing,
        )
        lora = model_cfg.lora
        self.pool = AdapterPool(
            base,
            LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules),
            projector=FAMILIES[model_cfg.family].projector if lora.train_projector else None, layer=layer,
        )
        self.model = self.pool.peft  # registered as a submodule: parameters, devices, precision
        self.extras = self.pool.extras  # methods' own modules (keys, projectors), registered the same way
        self.strict_loading = False  # in-flight checkpoints hold the trainable weights only
        self.pending_rng: dict[str, Any] | None = None  # RNG states of a restored checkpoint
        self.router = Router()
        self.batch_context = ExitStack()  # the router's training context of the running batch
        self.generation_budgets: list[int] = [16]  # max_new_tokens per predict dataloader (set by the evaluator)
        self.stay_on_device = False  # see `cpu`

    def cpu(self) -> ContinualModule:
        """Lightning's `Strategy.teardown` moves the module to the CPU after every `fit` and `predict`, and the
        next one moves it back: minutes per stage for a 7B model, and a risk for 4-bit weights. While
        `stay_on_device` is set (by the continual loop, for the run's stages) the module stays where it is."""
        return self if self.stay_on_device else super().cpu()

    def set_router(self, router: Router | None) -> None:
        """Install the routing of every forward (None: no routing); the module owns it."""
        self.router = router if router is not None else Router()

    def continual_callbacks(self) -> Iterator[ContinualCallback]:
        trainer = self._trainer
        for callback in trainer.callbacks if trainer is not None else ():
            if isinstance(callback, ContinualCallback):
                yield callback

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """In-flight checkpoints keep the trainable weights only (never the frozen or 4-bit base) and
        every rank's RNG states (a list by global rank; called on every rank), so a resumed task draws the same
        dropout masks."""
        trainable = {name for name, param in self.named_parameters() if param.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        checkpoint["rng"] = gather_objects(rng)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # applied at the next training batch: Lightning draws from the RNG while it restarts the data
        self.pending_rng = checkpoint["rng"][self.global_rank]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.pending_rng is not None:
            torch.set_rng_state(self.pending_rng["torch"])
            if "cuda" in self.pending_rng:
                torch.cuda.set_rng_state(self.pending_rng["cuda"])
            self.pending_rng = None
        self.batch_context.enter_context(self.router.training(batch))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batch_context.close()

    def on_train_end(self) -> None:
        self.batch_context.close()  # a fit stopped inside a batch

    def on_fit_start(self) -> None:
        """Train mode for every submodule: models load in eval mode and evaluation leaves them there."""
        self.train()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self.model(**model_inputs(batch))
        loss = answer_loss(outputs.logits, batch["labels"], batch["loss_weight"], rank_share_of_tokens(batch["labels"]))
        self.log("loss/answer", loss, prog_bar=True, batch_size=len(batch["labels"]))
        for callback in self.continual_callbacks():
            for name, term in callback.training_loss(self, batch, outputs).items():
                self.log(f"loss/{name}", term, batch_size=len(batch["labels"]))
                loss = loss + term
        self.log("loss/total", loss, batch_size=len(batch["labels"]))
        return loss

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: the trained projector at `model.lora.projector_lr` (default `train.lr`), adapter parts on
        its linears included (SMoLoRA's), every other trainable parameter (adapters, methods' extras) at `train.lr`."""
        projector = {id(p) for p in self.pool.projector_side()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) not in projector], "lr": self.train_cfg.lr}]
        if projector:
            lr = self.model_cfg.lora.projector_lr
            groups.append({"params": [p for p in trainable if id(p) in projector],
                           "lr": self.train_cfg.lr if lr is None else lr})
        return groups

    def configure_optimizers(self):
        optimizer = build_optimizer(self.parameter_groups(), self.train_cfg)
        schedule = build_schedule(optimizer, self.train_cfg, max(1, int(self.trainer.estimated_stepping_batches)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[str]:
        """Lightning's predict hook: generation with the budget the evaluator set for this dataloader's task."""
        return self.generate(batch, self.generation_budgets[dataloader_idx])

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], max_new_tokens: int) -> list[str]:
        """Greedy completions (decoded, stripped), one per row of a left-padded batch."""
        size = len(batch["input_ids"])
        groups = self.router.route(batch)
        texts: list[str] = [""] * size
        inputs = model_inputs(batch)
        tokenizer = self.processor.tokenizer
        for rows, context in groups:
            sub = inputs if rows == list(range(size)) else select_rows(inputs, rows)
            with context:
                out = self.model.generate(
                    **sub, max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            decoded = tokenizer.batch_decode(out[:, sub["input_ids"].shape[1]:], skip_special_tokens=True)
            for row, text in zip(rows, decoded, strict=True):
                texts[row] = text.strip()
        return texts
