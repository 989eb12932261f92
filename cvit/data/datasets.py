"""Map-style datasets over records; images load lazily in `__getitem__`."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from cvit.data.records import TestRecord, TrainRecord
from cvit.errors import DataError
from cvit.model.prompting import instruction_text


def load_image(path, uid: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise DataError(f"record {uid}: unreadable image {path}: {err}") from None


def pick_template(templates: tuple[str, ...], seed: int, uid: str) -> str | None:
    """A template drawn per record, deterministic in (seed, record id)."""
    if not templates:
        return None
    return templates[random.Random(f"{seed}/{uid}").randrange(len(templates))]


@dataclass
class TrainSet(Dataset):
    """One task's training records; items are {image, instruction, answer, loss_weight}."""

    records: list[TrainRecord]
    templates: tuple[str, ...]
    seed: int
    loss_weight: float = 1.0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        template = pick_template(self.templates, self.seed, record.uid)
        return {
            "image": load_image(record.image, record.uid),
            "instruction": instruction_text(record.question, template),
            "answer": record.answer,
            "loss_weight": self.loss_weight,
        }


@dataclass
class TestSet(Dataset):
    """One task's test records; items are {uid, image, instruction, answers}."""

    records: list[TestRecord]
    templates: tuple[str, ...]
    seed: int

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        template = pick_template(self.templates, self.seed, record.uid)
        return {
            "uid": record.uid,
            "image": load_image(record.image, record.uid),
            "instruction": instruction_text(record.question, template),
            "answers": list(record.answers),
        }
