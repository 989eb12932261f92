"""matrix.json, the run document: everything a run has measured so far, in one typed, versioned record.

The continual loop writes it after every stage (atomically, `RunDirectory.save_matrix`); resume, the report, the
metrics, the demo, the TensorBoard board and the CKA analysis read it (`read_run_document`). Score lists follow
the stream: row j of `matrix` holds the scores (0-100; captions CIDEr x100) of tasks 0..j after stage j.
`version` is the layout's: a document of a newer layout than this kit reads is refused; one written before
documents carried a version has the first layout. `cvit metrics` also reads a hand-written {"tasks", "matrix"}
file (`RunDocument.of_matrix`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvit.errors import DataError

VERSION = 3
ADDED_IN = {"timing": 2, "answer_loss": 3}  # keys a layout added: optional in documents of an earlier layout


@dataclass
class RunDocument:
    tasks: list[str]  # the stream, in training order
    method: str = ""
    mode: str = "sequential"  # sequential | joint | zeroshot
    benchmark: str = ""
    stages: list[str] = field(default_factory=list)  # one per fit: the tasks, or the mode for a single stage
    scorers: dict[str, str] = field(default_factory=dict)  # task (stream and unseen) -> scorer name
    relaxed: bool = False
    unseen_tasks: list[str] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)  # benchmark.protocol: what the numbers compare with
    setup: dict[str, Any] = field(default_factory=dict)  # cvit.run.provenance.run_setup
    matrix: list[list[float]] = field(default_factory=list)  # [stage][seen task]
    future: list[list[float]] = field(default_factory=list)  # [stage][not-yet-trained task] (eval.future_tasks)
    unseen: list[list[float]] = field(default_factory=list)  # [stage][unseen task]
    mif: list[list[float | None]] = field(default_factory=list)  # [stage][seen task] instruction following, 0-100
    unseen_mif: list[list[float | None]] = field(default_factory=list)
    details: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # task -> stage -> scorer outputs
    seconds: list[float] = field(default_factory=list)  # [stage] train + evaluation wall time
    parameters: list[dict[str, int]] = field(default_factory=list)  # [stage] trainable / stored / inference
    # [stage] train_seconds (task-start hooks and the fit), steps (optimizer steps), step_seconds (median wall time
    # of a training batch, callbacks' batch hooks included), eval_seconds (generation and scoring; task-end hooks
    # are in neither), eval_items (test records evaluated)
    timing: list[dict[str, float]] = field(default_factory=list)
    # [stage] mean answer loss (nats per answer token) over the first and the last tenth of the stage's training
    # batches, {"start", "end"}; None for a stage that trains nothing (zero-shot) or resumed at its end
    answer_loss: list[dict[str, float] | None] = field(default_factory=list)
    completed: int = 0  # stages done
    version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str | Path) -> RunDocument:
        """The document in `data` (a parsed matrix.json); DataError naming `where` and the key otherwise."""
        version = data.get("version", 1)
        if not isinstance(version, int) or version > VERSION:
            raise DataError(f"{where}: key 'version': run document layout {version!r}; this kit reads up to {VERSION}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names
                   if name not in data and name != "version" and ADDED_IN.get(name, 1) <= version]
        if missing:
            raise DataError(f"{where}: missing key {missing[0]!r} of a run document"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise DataError(f"{where}: unknown key {unknown[0]!r} in a run document")
        return cls(**{**data, "version": version})

    @classmethod
    def of_matrix(cls, data: dict[str, Any]) -> RunDocument:
        """A run document from whatever keys a hand-written matrix file has ("tasks" and "matrix" at least)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def read_run_document(path: str | Path) -> RunDocument:
    """The run document in `path` (tasks and matrix validated as `read_matrix_doc` does, then every key)."""
    from cvit.eval.metrics import read_matrix_doc

    return RunDocument.from_json(read_matrix_doc(path), path)
