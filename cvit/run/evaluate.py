"""Evaluate the module on tasks: batched greedy generation through one `trainer.predict` per stage
(one dataloader per task, so the model is not moved between devices per task), then scoring."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean
from typing import Any

import lightning as L

from cvit.data.datamodule import ContinualDataModule
from cvit.data.stream import Task
from cvit.eval.mif import following_verdicts
from cvit.eval.scorers import get_scorer
from cvit.module import ContinualModule
from cvit.run.parallel import gather_in_order, trainer_arguments


@dataclass
class TaskResult:
    scores: dict[str, float]  # "score" (0-100) plus the scorer's extra keys, and "mif" (0-100) if judged
    predictions: list[dict[str, Any]]  # {question_id, prediction, answers, score (0..1), follows}


def predict_tasks(
    trainer: L.Trainer, module: ContinualModule, datamodule: ContinualDataModule, tasks: list[Task]
) -> list[list[str]]:
    """Generated texts per task, in test-record order, on every rank (each rank generates its shard)."""
    rank, world = trainer.global_rank, trainer.world_size
    module.generation_budgets = [task.max_new_tokens for task in tasks]
    batches = trainer.predict(module, dataloaders=[datamodule.test_dataloader(task, rank, world) for task in tasks])
    per_task = batches if len(tasks) > 1 else [batches]  # Lightning unnests a single dataloader
    local = [[text for batch in task_batches for text in batch] for task_batches in per_task]
    return [gather_in_order(texts) for texts in local]


def score_outputs(
    task: Task, records: list, texts: list[str], relaxed: bool, caption_metric: str, scoring: str = "official",
    meteor: bool = True,
) -> TaskResult:
    """Score `texts` (one per test record, in order) with the task's scorer under `scoring` (official |
    lenient, see cvit.eval.scorers; `meteor` as there) and its instruction-following rule."""
    references = [list(record.answers) for record in records]
    scorer = get_scorer(task.scorer, relaxed=relaxed, caption_metric=caption_metric, scoring=scoring, meteor=meteor)
    scores, items = scorer.score_items(texts, references)
    verdicts = following_verdicts(task.mif, texts, references)
    if verdicts is not None:
        scores["mif"] = 100 * fmean(verdicts)
    predictions = [
        {"question_id": record.uid, "prediction": text, "answers": list(record.answers), "score": item,
         "follows": None if verdicts is None else verdicts[index]}
        for index, (record, text, item) in enumerate(zip(records, texts, items, strict=True))
    ]
    return TaskResult(scores, predictions)


def evaluate_tasks(
    trainer: L.Trainer, module: ContinualModule, datamodule: ContinualDataModule, tasks: list[Task], relaxed: bool,
    caption_metric: str = "cider", scoring: str = "official", meteor: bool = True,
) -> dict[str, TaskResult]:
    """Each task's result, by name, on rank 0 (other ranks generate their shards and get {})."""
    if not tasks:
        return {}
    texts = predict_tasks(trainer, module, datamodule, tasks)
    if trainer.global_rank != 0:
        return {}  # every rank generates its shard; rank 0 scores the gathered texts
    return {
        task.name: score_outputs(task, datamodule.test_records[task.name], out, relaxed, caption_metric, scoring,
                                 meteor)
        for task, out in zip(tasks, texts, strict=True)
    }


def evaluation_trainer(train: Any) -> L.Trainer:
    """A bare trainer for generation on the run's processes (`train`: the config's train section; no logger,
    checkpoints or method callbacks; grads allowed so cached buffers are not inference tensors)."""
    return L.Trainer(
        **trainer_arguments(train), precision=train.precision, logger=False, enable_checkpointing=False,
        inference_mode=False, enable_model_summary=False, enable_progress_bar=True,
    )
