"""Evaluate the module on tasks: batched greedy generation through `trainer.predict`, then scoring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L

from cvit.data.datamodule import ContinualDataModule
from cvit.data.stream import Task
from cvit.eval.scorers import get_scorer
from cvit.module import ContinualModule


@dataclass
class TaskResult:
    scores: dict[str, float]  # "score" (0-100) plus the scorer's extra keys
    predictions: list[dict[str, Any]]  # {question_id, prompt, prediction, answers, correct}


def predict_task(trainer: L.Trainer, module: ContinualModule, datamodule: ContinualDataModule, task: Task):
    module.max_new_tokens = task.max_new_tokens
    batches = trainer.predict(module, dataloaders=datamodule.test_dataloader(task))
    return [text for batch in batches for text in batch]


def evaluate_task(
    trainer: L.Trainer, module: ContinualModule, datamodule: ContinualDataModule, task: Task, relaxed: bool
) -> TaskResult:
    texts = predict_task(trainer, module, datamodule, task)
    test_set = datamodule.test_set(task)
    references = [list(record.answers) for record in test_set.records]
    scorer = get_scorer(task.scorer, relaxed=relaxed)
    scores = scorer.score(texts, references)
    items = scorer.item_scores(texts, references)
    predictions = [
        {"question_id": record.uid, "prediction": text, "answers": list(record.answers), "score": item}
        for record, text, item in zip(test_set.records, texts, items, strict=True)
    ]
    return TaskResult(scores, predictions)


def evaluation_trainer(accelerator: str, precision: str) -> L.Trainer:
    """A bare trainer for generation (no logger, checkpoints or method callbacks; grads allowed so
    cached buffers are not inference tensors)."""
    return L.Trainer(
        accelerator=accelerator, devices=1, precision=precision, logger=False, enable_checkpointing=False,
        inference_mode=False, enable_model_summary=False, enable_progress_bar=True,
    )
