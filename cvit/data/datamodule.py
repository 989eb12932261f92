"""The continual DataModule: owns the task stream, the current stage and replay mixing.

A *stage* is what one `trainer.fit` trains on: one task of the stream (sequential methods) or
several (joint training). Records are read and validated when the DataModule is built, before any
model is loaded; images load lazily. The collator (which needs the model's processor) is attached
once the model exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from torch.utils.data import ConcatDataset, DataLoader, Subset

from cvit.data.collate import Collator
from cvit.data.datasets import TestSet, TrainSet, image_problem, record_prompt
from cvit.data.records import TestRecord, TrainRecord, load_test, load_train
from cvit.data.sampler import ResumableSampler
from cvit.data.stream import Task
from cvit.errors import DataError
from cvit.run.parallel import shard


class ContinualDataModule(L.LightningDataModule):
    def __init__(
        self,
        stream: list[Task],
        unseen: list[Task],
        root,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        max_train_samples: int | None = None,
        max_test_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.stream, self.unseen = stream, unseen
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.train_records: dict[str, list[TrainRecord]] = {
            t.name: load_train(t.train_file, root)[:max_train_samples] for t in stream
        }
        self.test_records: dict[str, list[TestRecord]] = {
            t.name: load_test(t.test_file, root)[:max_test_samples] for t in stream + unseen
        }
        self.collator: Collator | None = None
        self.stage: list[Task] = []
        self.replay: list[tuple[Task, list[int], float]] = []

    @property
    def tasks(self) -> dict[str, Task]:
        return {t.name: t for t in self.stream + self.unseen}

    def verify_images(self) -> int:
        """Decode every referenced image (slow on big roots; `cvit validate` does it).
        Returns the number checked; DataError listing up to 10 unreadable files otherwise."""
        records = [r for rs in self.train_records.values() for r in rs]
        records += [r for rs in self.test_records.values() for r in rs]
        bad = [f"record {record.uid}: {problem}" for record in records
               if (problem := image_problem(Path(record.image))) is not None]
        if bad:
            raise DataError(f"{len(bad)} unreadable image(s):\n  " + "\n  ".join(bad[:10]))
        return len(records)

    def attach_collator(self, collator: Collator) -> None:
        self.collator = collator

    def set_stage(self, tasks: Sequence[Task]) -> None:
        """Train on `tasks` in the next fit; clears replay mixed into the previous stage."""
        self.stage = list(tasks)
        self.replay = []

    def mix_in(self, task: Task, indices: Sequence[int], loss_weight: float = 1.0) -> None:
        """Replay: add records `indices` of an earlier task's training data to the current stage,
        with a per-sample loss weight. Records are referenced, not copied."""
        size = len(self.train_records[task.name])
        bad = [i for i in indices if not 0 <= i < size]
        if bad:
            raise IndexError(f"replay indices {bad[:5]} out of range for task {task.name!r} ({size} records)")
        self.replay.append((task, list(indices), float(loss_weight)))

    def instructions(self, task: Task, indices: Sequence[int] | None = None) -> list[str]:
        """The instruction texts (question + template) of a task's training records `indices` (default: all),
        in that order."""
        return [instruction for instruction, _ in self.prompts(task, indices)]

    def templates(self, task: Task, indices: Sequence[int] | None = None, split: str = "train") -> list[str]:
        """The format instruction (template) of a task's `split` ("train" or "test") records `indices`
        (default: all)."""
        return [template for _, template in self.prompts(task, indices, split)]

    def prompts(self, task: Task, indices: Sequence[int] | None = None, split: str = "train") -> list[tuple[str, str]]:
        records = (self.train_records if split == "train" else self.test_records)[task.name]
        chosen = records if indices is None else [records[i] for i in indices]
        return [record_prompt(r, task.templates, self.seed, task.known_templates) for r in chosen]

    def train_set(self, task: Task, loss_weight: float = 1.0) -> TrainSet:
        return TrainSet(self.train_records[task.name], task.templates, self.seed, task.known_templates, task.name,
                        loss_weight)

    def test_set(self, task: Task) -> TestSet:
        return TestSet(self.test_records[task.name], task.templates, self.seed, task.known_templates, task.name)

    def train_dataloader(self) -> DataLoader:
        if not self.stage:
            raise RuntimeError("no stage set: call set_stage() before fit")
        parts = [self.train_set(t) for t in self.stage]
        parts += [Subset(self.train_set(t, w), idx) for t, idx, w in self.replay if idx]
        dataset = ConcatDataset(parts)
        trainer = self.trainer
        sampler = ResumableSampler(
            len(dataset), self.seed + 1000 * (self.stage[0].index + 1),
            lambda: self.batch_size * self.resumed_batches(),
            *((trainer.global_rank, trainer.world_size) if trainer is not None else ()),
        )
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=self.collator.train_batch,
            num_workers=self.num_workers,
        )

    def resumed_batches(self) -> int:
        """Batches of the current epoch a fit restored from an in-flight checkpoint has already seen."""
        trainer = self.trainer
        return 0 if trainer is None else trainer.fit_loop.epoch_loop.batch_progress.current.completed

    def test_dataloader(self, task: Task, rank: int = 0, world: int = 1) -> DataLoader:
        """The task's test records in order; under data parallelism rank `rank` of `world` takes its
        `cvit.run.parallel.shard` of them (gathered back in order by `gather_in_order`)."""
        test_set = self.test_set(task)
        return DataLoader(
            test_set if world == 1 else Subset(test_set, shard(len(test_set), rank, world)),
            batch_size=self.eval_batch_size, shuffle=False,
            collate_fn=self.collator.eval_batch, num_workers=self.num_workers,
        )
