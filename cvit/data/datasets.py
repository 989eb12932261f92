"""Map-style datasets over records; images load lazily in `__getitem__`."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from cvit.errors import DataError
from cvit.model.prompting import instruction_text


def load_image(path, uid: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise DataError(f"record {uid}: unreadable image {path}: {err}") from None


def record_instruction(record, templates: tuple[str, ...], seed: int) -> str:
    """The record's question with one of the task's templates, drawn per record, deterministic in
    (seed, record id); the bare question when the task has no templates."""
    if not templates:
        return instruction_text(record.question, None)
    template = templates[random.Random(f"{seed}/{record.uid}").randrange(len(templates))]
    return instruction_text(record.question, template)


@dataclass
class RecordSet(Dataset):
    """Records of one task with its instruction templates (one drawn per record, seeded)."""

    records: list
    templates: tuple[str, ...]
    seed: int

    def __len__(self) -> int:
        return len(self.records)

    def common(self, index: int) -> tuple[Any, dict[str, Any]]:
        """(record, {image, instruction}) for item `index`."""
        record = self.records[index]
        return record, {
            "image": load_image(record.image, record.uid),
            "instruction": record_instruction(record, self.templates, self.seed),
        }


@dataclass
class TrainSet(RecordSet):
    """One task's TrainRecords; items are {image, instruction, answer, loss_weight}."""

    loss_weight: float = 1.0

    def __getitem__(self, index: int) -> dict[str, Any]:
        record, item = self.common(index)
        return {**item, "answer": record.answer, "loss_weight": self.loss_weight}


@dataclass
class TestSet(RecordSet):
    """One task's TestRecords; items are {uid, image, instruction, answers}."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        record, item = self.common(index)
        return {**item, "uid": record.uid, "answers": list(record.answers)}
