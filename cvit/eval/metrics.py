"""Continual-learning metrics of an accuracy matrix, and reading matrices from JSON files.

`matrix[j][i]` is the score on task i after training task j (T rows = T tasks trained). Row j holds at
least j + 1 entries; entries past the diagonal are not-yet-trained tasks, used only by FWT.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import fmean
from typing import Any

from cvit.errors import DataError
from cvit.eval.mif import mean_following
from cvit.run.document import RunDocument

METRIC_LABELS = {
    "last": "Last (ACC)", "maa": "MAA", "bwt": "BWT", "forgetting": "Forgetting", "new_acc": "New.ACC",
    "fwt": "FWT", "mif": "MIF",
}


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _validated(matrix: Any) -> list[list[float]]:
    if not isinstance(matrix, list) or not matrix:
        raise ValueError(f"accuracy matrix must be a non-empty list of rows, got {matrix!r}")
    rows = []
    for j, row in enumerate(matrix):
        if not isinstance(row, list):
            raise ValueError(f"matrix row {j}: expected a list of numbers, got {row!r}")
        if len(row) < j + 1:
            raise ValueError(f"matrix row {j} has {len(row)} entries, needs at least {j + 1} (tasks 0..{j})")
        rows.append([_number(value, f"matrix row {j}, entry {i}") for i, value in enumerate(row)])
    return rows


def continual_metrics(
    matrix: list[list[float]], reference: list[float] | None = None, columns: list[int] | None = None,
    bwt_denominator: str = "T-1",
) -> dict[str, float | None]:
    """Metrics in the matrix's own scale, T = number of rows:
    last = mean_i A[T-1][i]; maa = mean_j mean_{i<=j} A[j][i]; new_acc = mean_i A[i][i];
    bwt = mean_{i<T-1} (A[T-1][i] - A[i][i]); forgetting = mean_{i<T-1} (max_{i<=j<T-1} A[j][i] - A[T-1][i])
    (both None when T == 1; BWT divides by T-1, or by T with bwt_denominator="T" as ProgLoRA's tables do).
    With `reference` (T per-task scores, e.g. zero-shot or trained in isolation) also fwt: when every row
    j < T-1 holds task j+1, the GEM form mean_{0<i<T} (A[i-1][i] - reference[i]); otherwise (triangular
    rows, or T == 1) ProgLoRA's form mean_i (A[i][i] - reference[i]).
    `columns` restricts every mean to those tasks (e.g. all but captions, whose CIDEr has another
    scale); stages stay as they are, and a stage with no selected task seen is left out of maa.
    ValueError: an empty matrix, a row j shorter than j+1, a non-number, or a reference not of T numbers."""
    rows = _validated(matrix)
    size = len(rows)
    kept = sorted(set(range(size) if columns is None else columns))
    if not kept or not all(0 <= i < size for i in kept):
        raise ValueError(f"columns must be task indices in 0..{size - 1}, got {columns!r}")
    last = rows[-1][:size]
    diagonal = [rows[i][i] for i in range(size)]
    earlier = [i for i in kept if i < size - 1]
    seen_per_stage = [[row[i] for i in kept if i <= j] for j, row in enumerate(rows)]
    metrics: dict[str, float | None] = {
        "last": fmean(last[i] for i in kept),
        "maa": fmean(fmean(seen) for seen in seen_per_stage if seen),
        "bwt": sum(last[i] - diagonal[i] for i in earlier) / (len(earlier) + (bwt_denominator == "T"))
        if earlier else None,
        "forgetting": fmean(max(rows[j][i] for j in range(i, size - 1)) - last[i] for i in earlier)
        if earlier else None,
        "new_acc": fmean(diagonal[i] for i in kept),
    }
    if reference is not None:
        if not isinstance(reference, list) or len(reference) != size:
            raise ValueError(f"reference must be a list of {size} scores (one per task), got {reference!r}")
        ref = [_number(value, f"reference entry {i}") for i, value in enumerate(reference)]
        if size > 1 and all(len(rows[j]) > j + 1 for j in range(size - 1)):
            metrics["fwt"] = fmean(rows[i - 1][i] - ref[i] for i in kept if i > 0) if kept != [0] else None
        else:
            metrics["fwt"] = fmean(diagonal[i] - ref[i] for i in kept)
    return metrics


def read_matrix_doc(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path` with a valid "tasks" (list of names) and "matrix" (at most one row per
    task, row j with j+1 .. len(tasks) numbers; may be empty for a run that has not finished a stage).
    Raises DataError naming the file (and the line for malformed JSON)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from error
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}"
        raise DataError(f"{path}: malformed JSON at {where}: {error.msg}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with keys 'tasks' and 'matrix'")
    for key in ("tasks", "matrix"):
        if key not in doc:
            raise DataError(f"{path}: missing key {key!r}")
    tasks, matrix = doc["tasks"], doc["matrix"]
    if not isinstance(tasks, list) or not all(isinstance(task, str) for task in tasks):
        raise DataError(f"{path}: 'tasks' must be a list of task names")
    if not isinstance(matrix, list) or len(matrix) > len(tasks):
        raise DataError(f"{path}: 'matrix' must be a list of at most {len(tasks)} rows (one per task)")
    try:
        if matrix:
            _validated(matrix)
    except ValueError as error:
        raise DataError(f"{path}: {error}") from None
    for j, row in enumerate(matrix):
        if len(row) > len(tasks):
            raise DataError(f"{path}: matrix row {j} has {len(row)} entries but there are {len(tasks)} tasks")
    return doc


def run_metrics(doc: RunDocument, exclude_scorers: tuple[str, ...] = ()) -> dict[str, float | None]:
    """Metrics of a run's matrix.json document: the continual metrics for a sequential run; for a
    single-stage run (zero-shot, joint), whose one row scores every task, only `last` is defined.
    `exclude_scorers` leaves out tasks scored that way (e.g. ("caption",): CIDEr x100 is not 0-100)."""
    columns = [i for i, task in enumerate(doc.tasks) if doc.scorers.get(task) not in exclude_scorers]
    undefined = dict.fromkeys(("last", "maa", "bwt", "forgetting", "new_acc", "mif"))
    if not doc.matrix or not [i for i in columns if i < len(doc.matrix[-1])]:
        return undefined  # no stage completed yet, or no selected task evaluated yet
    rates = (doc.mif or [[]])[-1]
    mif = {"mif": mean_following(rates[i] for i in columns if i < len(rates))}  # SMoLoRA's: trained tasks, latest
    if doc.mode == "sequential":
        metrics = continual_metrics(doc.matrix, columns=[i for i in columns if i < len(doc.matrix)],
                                    bwt_denominator=doc.protocol.get("bwt_denominator", "T-1"))
        return {**metrics, **mif}
    row = doc.matrix[-1]
    return {**undefined, "last": fmean(row[i] for i in columns), **mif}


def format_metrics(metrics: dict[str, float | None]) -> str:
    """An aligned two-column text table, one metric a line, None shown as "-"."""
    labels = {key: METRIC_LABELS.get(key, key) for key in metrics}
    width = max(len(label) for label in labels.values())
    return "\n".join(f"{labels[key]:<{width}}  {format_value(value):>8}" for key, value in metrics.items())


def format_value(value: float | None) -> str:
    """Two decimals, or "-" for None."""
    return "-" if value is None else f"{value:.2f}"
