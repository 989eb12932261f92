"""The continual loop: one `trainer.fit` per stage, task hooks, evaluation, persistence, resume.

What can fail on user input (config, callbacks, data files and records, model folder) is checked in
`prepare`, before the model is loaded; images are decode-checked there with `data.verify_images`.
After each stage the run directory gains the adapters, the callbacks' states, the predictions and
the accuracy-matrix row, so a stopped run resumes from the last completed stage (`resume=True`) and
ends with the same matrix as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from cvit.config.load import Sources, to_yaml
from cvit.config.registry import build_callbacks
from cvit.config.validate import validate_config
from cvit.data.collate import Collator
from cvit.data.datamodule import ContinualDataModule
from cvit.data.stream import Task, build_tasks
from cvit.reports.tensorboard import ContinualBoard
from cvit.run.document import RunDocument
from cvit.run.evaluate import evaluate_tasks, evaluation_trainer
from cvit.run.inflight import AtomicCheckpointIO, inflight_callback, inflight_file
from cvit.run.parallel import check_strategy, every_rank_here, launch_rank, trainer_arguments, world_size
from cvit.run.provenance import run_setup
from cvit.run.rundir import RunDirectory, stage_name
from cvit.run.step_record import StepRecord
from cvit.run.world import check_same_world, world_identity


@dataclass(frozen=True)
class Stage:
    """What one `fit` trains on; `task` is what the task hooks receive (for a joint or zero-shot
    stage, a task named after the mode that stands for the whole stream)."""

    name: str
    tasks: list[Task]
    task: Task
    trains: bool


def plan_stages(mode: str, stream: list[Task]) -> list[Stage]:
    if mode == "sequential":
        return [Stage(t.name, [t], t, True) for t in stream]
    merged = dataclasses.replace(stream[0], name=mode)
    return [Stage(mode, list(stream) if mode == "joint" else [], merged, mode == "joint")]


def default_run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.run.root) / (cfg.run.name or f"{cfg.method.name}-{cfg.benchmark.name}")


class ContinualRun:
    def __init__(self, cfg: DictConfig, sources: Sources, run_dir: str | Path | None = None) -> None:
        self.cfg, self.sources = cfg, sources
        self.run_dir = RunDirectory(run_dir or default_run_dir(cfg))
        self.module = None
        self.rank = launch_rank(cfg.train)  # only rank 0 writes the run directory

    def prepare(self) -> None:
        """Validate config and data; no model is loaded."""
        cfg = self.cfg
        validate_config(cfg, self.sources)
        self.callbacks = build_callbacks(cfg.callbacks, self.sources, cfg.method.mode)
        check_strategy(cfg.train, self.callbacks, self.sources.of)
        self.stream, self.unseen = build_tasks(cfg.benchmark, self.sources)
        self.stages = plan_stages(cfg.method.mode, self.stream)
        self.datamodule = ContinualDataModule(
            self.stream, self.unseen if cfg.eval.unseen else [], Path(cfg.benchmark.root),
            cfg.data.batch_size, cfg.data.eval_batch_size, cfg.data.num_workers,
            cfg.data.max_train_samples, cfg.data.max_test_samples, cfg.train.seed,
        )
        if cfg.data.verify_images:
            self.datamodule.verify_images()
        if self.callbacks:
            from transformers import AutoConfig

            model_config = AutoConfig.from_pretrained(cfg.model.path)  # the config alone: no weights
            for callback in self.callbacks.values():
                callback.check_model(model_config)

    def run(self, resume: bool = False) -> Path:
        """Run (or continue) the experiment; returns the run directory."""
        from cvit.reports.run_report import write_report

        self.prepare()
        config_yaml = to_yaml(self.cfg)
        if resume:
            self.run_dir.check_resumable(config_yaml)
            if self.rank == 0:
                self.run_dir.remove_stale_temporaries()
            doc = self.run_dir.load_matrix() or self.empty_matrix()
            check_same_world(doc.setup.get("world", {}), world_identity(self.cfg.benchmark.root, self.cfg.model.path),
                             self.run_dir.path)
            if doc.completed == len(self.stages):
                return self.run_dir.path  # nothing left to do: no model load
        else:
            if self.rank == 0:
                self.run_dir.check_new()
            doc = self.empty_matrix()
        self.load_model()  # before the run directory exists: a model that fails to load leaves nothing
        if not resume and self.rank == 0:
            self.run_dir.create(config_yaml)
        start = doc.completed
        if start:
            self.restore(start - 1)
        board = ContinualBoard(self.run_dir.path / "tb" / "continual") if self.rank == 0 else None
        try:
            for index in range(start, len(self.stages)):
                self.run_stage(index, doc)
                if board is not None:
                    board.log_stage(index, doc)
                    write_report(self.run_dir.path)
        finally:
            if board is not None:
                board.close()
        every_rank_here()  # no rank closes its gloo/NCCL connections at exit while rank 0 still writes the report
        return self.run_dir.path

    def load_model(self) -> None:
        """Build the module (loads the model) and give the DataModule its processor's collator."""
        from cvit.module import ContinualModule

        L.seed_everything(self.cfg.train.seed, verbose=False)  # the adapters' initial weights
        layers = [layer for cb in self.callbacks.values() if (layer := cb.adapter_layer()) is not None]
        self.module = ContinualModule(self.cfg.model, self.cfg.train, layers[0] if layers else None)
        self.module.stay_on_device = True  # between the stages' fits and predicts
        model = self.cfg.model
        self.datamodule.attach_collator(
            Collator(self.module.processor, model.family, model.max_length, model.chat_format, model.image_aspect)
        )

    def empty_matrix(self) -> RunDocument:
        cfg = self.cfg
        return RunDocument(
            tasks=[t.name for t in self.stream], method=cfg.method.name, mode=cfg.method.mode,
            benchmark=cfg.benchmark.name, stages=[s.name for s in self.stages],
            scorers={t.name: t.scorer for t in self.stream + self.unseen}, relaxed=cfg.eval.relaxed,
            unseen_tasks=[t.name for t in self.datamodule.unseen],
            protocol=OmegaConf.to_container(cfg.benchmark.protocol), setup=run_setup(cfg, world_size(cfg.train)),
        )

    def restore(self, index: int) -> None:
        stage = self.stages[index]
        states = self.run_dir.load_stage(index, stage.name, self.module.pool)
        for key, callback in self.callbacks.items():
            callback.load_state_dict(states.get(key, {}))

    def inflight_dir(self, index: int, stage: Stage) -> Path:
        return self.run_dir.path / "inflight" / stage_name(index, stage.name)

    def stage_trainer(self, index: int, stage: Stage) -> L.Trainer:
        cfg = self.cfg.train
        extra = []
        if cfg.checkpoint_every_n_steps > 0:
            extra.append(inflight_callback(self.inflight_dir(index, stage), cfg.checkpoint_every_n_steps))
        return L.Trainer(
            **trainer_arguments(cfg), precision=cfg.precision, max_epochs=cfg.epochs,
            max_steps=cfg.max_steps, gradient_clip_val=cfg.grad_clip or None,
            accumulate_grad_batches=cfg.accumulate_grad_batches, log_every_n_steps=cfg.log_every_n_steps,
            logger=TensorBoardLogger(self.run_dir.path / "tb", name="train", version=stage_name(index, stage.name)),
            callbacks=[*self.callbacks.values(), LearningRateMonitor(logging_interval="step"), *extra, StepRecord()],
            enable_checkpointing=bool(extra), plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0,
            limit_val_batches=0,
            default_root_dir=self.run_dir.path, enable_model_summary=index == 0,
        )

    def run_stage(self, index: int, doc: RunDocument) -> None:
        stage, module, datamodule = self.stages[index], self.module, self.datamodule
        started = time.perf_counter()
        L.seed_everything(self.cfg.train.seed + index, workers=True, verbose=False)
        datamodule.set_stage(stage.tasks)
        trainer = self.stage_trainer(index, stage) if stage.trains else None
        for callback in self.callbacks.values():
            callback.on_task_start(trainer, module, datamodule, stage.task)
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad) if stage.trains else 0
        if trainer is not None:
            # a stage interrupted after an in-flight checkpoint continues from it
            trainer.fit(module, datamodule=datamodule, ckpt_path=inflight_file(self.inflight_dir(index, stage)))
        trained = time.perf_counter()
        for callback in self.callbacks.values():
            callback.on_task_end(trainer, module, datamodule, stage.task)
        evaluating = time.perf_counter()
        row = self.evaluate_stage(index, stage, doc)
        if row is None:
            return  # not rank 0: the run directory and the run document are rank 0's
        self.run_dir.save_stage(
            index, stage.name, module.pool, {k: cb.state_dict() for k, cb in self.callbacks.items()}
        )
        doc.matrix.append(row["seen"])
        doc.future.append(row["future"])
        doc.unseen.append(row["unseen"])
        doc.mif.append(row["seen_mif"])
        doc.unseen_mif.append(row["unseen_mif"])
        doc.seconds.append(round(time.perf_counter() - started, 2))
        record = next((c for c in trainer.callbacks if isinstance(c, StepRecord)), None) if trainer else None
        doc.timing.append({
            "train_seconds": round(trained - started, 2), "steps": trainer.global_step if trainer else 0,
            "step_seconds": round(record.median(), 5) if record else 0.0,
            "eval_seconds": round(time.perf_counter() - evaluating, 2), "eval_items": row["items"],
        })
        doc.answer_loss.append(record.loss_summary() if record else None)
        doc.parameters.append({
            "trainable": trainable, "stored": module.pool.parameter_count(),
            "inference": module.router.inference_parameters(module.pool) + module.pool.projector_size,
        })
        doc.completed = index + 1
        self.run_dir.save_matrix(doc)
        shutil.rmtree(self.inflight_dir(index, stage), ignore_errors=True)

    def evaluated_tasks(self, index: int) -> tuple[list[Task], list[Task]]:
        """(seen tasks, not-yet-trained tasks) evaluated after stage `index`."""
        if self.cfg.method.mode != "sequential":
            return self.stream, []
        future = self.stream[index + 1:] if self.cfg.eval.future_tasks else []
        return self.stream[: index + 1], future

    def evaluate_stage(self, index: int, stage: Stage, doc: RunDocument) -> dict[str, Any] | None:
        """Scores of the seen, future and unseen tasks after stage `index` (one predict call, sharded over the
        ranks); None on ranks other than 0, which only generate."""
        seen, future = self.evaluated_tasks(index)
        groups = {"seen": seen, "future": future, "unseen": self.datamodule.unseen}
        trainer = evaluation_trainer(self.cfg.train)
        results = evaluate_tasks(
            trainer, self.module, self.datamodule, [t for tasks in groups.values() for t in tasks],
            self.cfg.eval.relaxed, self.cfg.benchmark.protocol.caption_metric, self.cfg.eval.scoring,
            self.cfg.eval.meteor,
        )
        if trainer.global_rank != 0:
            return None
        for name, result in results.items():
            self.run_dir.save_predictions(index, stage.name, name, result.predictions)
            doc.details.setdefault(name, {})[stage_name(index, stage.name)] = result.scores
        row = {group: [round(results[t.name].scores["score"], 4) for t in tasks] for group, tasks in groups.items()}
        row["items"] = sum(len(result.predictions) for result in results.values())
        for group in ("seen", "unseen"):  # instruction following; None where a task is not judged
            row[f"{group}_mif"] = [
                None if "mif" not in results[t.name].scores else round(results[t.name].scores["mif"], 4)
                for t in groups[group]
            ]
        return row
