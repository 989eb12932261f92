"""Map-style datasets over records; images load lazily in `__getitem__`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from cvit.errors import DataError
from cvit.model.prompting import instruction_text
from cvit.seeding import keyed_random

PIL_ERRORS = (OSError, SyntaxError, ValueError)  # PIL raises all three on corrupt files


def load_image(path, uid: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except PIL_ERRORS as err:
        raise DataError(f"record {uid}: unreadable image {path}: {err}") from None


def image_problem(path: Path) -> str | None:
    """None if the image at `path` decodes, else why not."""
    if not path.is_file():
        return f"image not found: {path}"
    try:
        with Image.open(path) as image:
            image.load()
    except PIL_ERRORS as err:
        return f"unreadable image {path}: {err}"
    return None


def _words(text: str) -> str:
    return r"\s+".join(map(re.escape, text.split()))


@cache
def _template_pattern(template: str) -> re.Pattern:
    """Matches a question carrying `template`; group "q" is the question without it."""
    if "{question}" in template:
        before, after = template.split("{question}", 1)
        return re.compile(rf"\s*{_words(before)}\s*(?P<q>.*?)\s*{_words(after.rstrip('.'))}\.?\s*", re.I | re.S)
    return re.compile(rf"(?P<q>.*?)\s*{_words(template.rstrip('.'))}\.?\s*", re.I | re.S)


def split_template(question: str, known: tuple[str, ...]) -> tuple[str, str | None]:
    """(`question` without the first (longest) of the `known` templates it already carries, that template),
    or (`question`, None) when it carries none; so data whose text holds one variant's instruction can be
    given another's."""
    for template in sorted(known, key=len, reverse=True):
        match = _template_pattern(template).fullmatch(question)
        if match:
            return match.group("q"), template
    return question, None


def strip_instruction(question: str, known: tuple[str, ...]) -> str:
    """`question` without any of the `known` templates it carries."""
    return split_template(question, known)[0]


def record_prompt(record, templates: tuple[str, ...], seed: int, known: tuple[str, ...] = ()) -> tuple[str, str]:
    """(instruction, template) of a record. The instruction is the record's question (stripped of any `known`
    template it carries) with one of the task's `templates`, drawn per record, deterministic in (seed, record
    id). The template is the format instruction alone (what instruction-matching methods compare): the one
    drawn, or, when the task has no templates (benchmark.templates=as_is), the known template the question
    carries, else the whole question."""
    if not templates:
        return instruction_text(record.question, None), split_template(record.question, known)[1] or record.question
    template = templates[keyed_random(seed, record.uid).randrange(len(templates))]
    return instruction_text(strip_instruction(record.question, known), template), template


@dataclass
class RecordSet(Dataset):
    """Records of one task with its instruction templates (one drawn per record, seeded)."""

    records: list
    templates: tuple[str, ...]
    seed: int
    known: tuple[str, ...] = ()  # every variant's templates, stripped from questions that carry one
    task: str = ""  # the task's name, given with every item

    def __len__(self) -> int:
        return len(self.records)

    def common(self, index: int) -> tuple[Any, dict[str, Any]]:
        """(record, {image, instruction, template, task}) for item `index`."""
        record = self.records[index]
        instruction, template = record_prompt(record, self.templates, self.seed, self.known)
        return record, {"image": load_image(record.image, record.uid), "instruction": instruction,
                        "template": template, "task": self.task}


@dataclass
class TrainSet(RecordSet):
    """One task's TrainRecords; items are {image, instruction, template, task, answer, loss_weight}."""

    loss_weight: float = 1.0

    def __getitem__(self, index: int) -> dict[str, Any]:
        record, item = self.common(index)
        return {**item, "answer": record.answer, "loss_weight": self.loss_weight}


@dataclass
class TestSet(RecordSet):
    """One task's TestRecords; items are {uid, image, instruction, template, task, answers}."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        record, item = self.common(index)
        return {**item, "uid": record.uid, "answers": list(record.answers)}
