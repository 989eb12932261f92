"""Read and validate the LLaVA conversation formats (DESIGN §5).

train: a JSON list of {id, image, conversations: [{from: human, value: "<image>\\n..."}, {from: gpt, value}]}
       (the first human/gpt exchange is used);
test:  a JSON list (or JSONL) of {question_id, image, text, answer}, `answer` a string or a list of
       strings (e.g. VQAv2's ten answers).
Image paths are relative to the benchmark root. Every error names the file and the record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvit.errors import DataError

IMAGE_MARKER = "<image>"


@dataclass(frozen=True)
class TrainRecord:
    uid: str
    image: Path
    question: str  # the human turn without the image marker
    answer: str


@dataclass(frozen=True)
class TestRecord:
    uid: str
    image: Path
    question: str
    answers: tuple[str, ...]


def read_json_records(path: Path) -> list[tuple[str, Any]]:
    """(location, record) pairs from a JSON list or a JSONL file; location is 'file:line' or 'file: record i'."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((f"{path}:{number}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}:{err.colno}: malformed JSON: {err.msg}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}:{err.colno}: malformed JSON: {err.msg}") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        records = [(f"{path}: record {i}", record) for i, record in enumerate(data)]
    if not records:
        raise DataError(f"{path}: no records (empty task)")
    return records


def field(record: Any, key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {type(record).__name__}")
    if key not in record:
        ident = record.get("id", record.get("question_id"))
        label = f" (id {ident})" if ident is not None else ""
        raise DataError(f"{where}{label}: missing field '{key}'")
    value = record[key]
    if not isinstance(value, kind):
        raise DataError(f"{where}: field '{key}' has type {type(value).__name__}, expected {kind}")
    return value


def image_path(root: Path, record: Any, where: str, check: bool = True) -> Path:
    path = root / field(record, "image", where)
    if check and not path.is_file():
        raise DataError(f"{where}: image not found: {path}")
    return path


def strip_marker(text: str) -> str:
    return text.replace(IMAGE_MARKER, "").strip()


def parse_train(record: Any, where: str, root: Path, check_image: bool = True) -> TrainRecord:
    uid = str(field(record, "id", where, (str, int)))
    turns = field(record, "conversations", where, list)
    human = next((t for t in turns if isinstance(t, dict) and t.get("from") == "human"), None)
    gpt = next((t for t in turns if isinstance(t, dict) and t.get("from") == "gpt"), None)
    if human is None or gpt is None:
        raise DataError(f"{where} (id {uid}): field 'conversations' needs a 'human' and a 'gpt' turn")
    question = strip_marker(field(human, "value", f"{where} conversations[human]"))
    answer = field(gpt, "value", f"{where} conversations[gpt]")
    return TrainRecord(uid, image_path(root, record, where, check_image), question, answer)


def load_train(path: Path, root: Path) -> list[TrainRecord]:
    return [parse_train(record, where, root) for where, record in read_json_records(path)]


def parse_test(record: Any, where: str, root: Path, check_image: bool = True) -> TestRecord:
    """A test record; `answer` may also come as `answers` (strings or VQA-style {"answer": ...} objects)
    or, for grounding, as CoIN's `answer_bbox` (a normalised "[x1, y1, x2, y2]" string or list)."""
    uid = str(field(record, "question_id", where, (str, int)))
    question = strip_marker(field(record, "text", where))
    return TestRecord(uid, image_path(root, record, where, check_image), question, record_answers(record, where, uid))


def load_test(path: Path, root: Path, check_images: bool = True) -> list[TestRecord]:
    return [parse_test(record, where, root, check_images) for where, record in read_json_records(path)]

ANSWER_KEYS = ("answer", "answers", "answer_bbox")


def record_answers(record: dict, where: str, uid: str) -> tuple[str, ...]:
    """The references of a test record from the first of ANSWER_KEYS it has."""
    key = next((k for k in ANSWER_KEYS if k in record), "answer")
    value = field(record, key, where, (str, list))
    if key == "answer_bbox" and isinstance(value, list):
        if len(value) != 4 or not all(isinstance(v, int | float) and 0 <= v <= 1 for v in value):
            raise DataError(f"{where} (id {uid}): field 'answer_bbox' must hold four numbers normalised to "
                            f"[0, 1] (LLaVA's padded-square convention), got {value!r}")
        value = "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, str):
        return (value,)
    answers = tuple(a.get("answer") if isinstance(a, dict) else a for a in value)
    if not answers or not all(isinstance(a, str) for a in answers):
        raise DataError(f"{where} (id {uid}): field '{key}' must be a non-empty list of strings "
                        '(or of {"answer": ...} objects)')
    return answers
