"""The run directory: what a run leaves behind, written so a crash never corrupts it.

  config.yaml                  the resolved config (a resumed run must match it)
  matrix.json                  the run document (cvit/run/document.py): scores so far; `completed` = stages done
  stages/<k>_<name>/adapters/  every adapter of the pool after stage k (peft safetensors)
  stages/<k>_<name>/callbacks.pt  every callback's state_dict after stage k
  predictions/<k>_<name>/<task>.jsonl
  tb/                          TensorBoard logs;  report.md, matrix.png  the report
Each stage directory is staged and renamed into place, then matrix.json is rewritten (atomically):
a stage counts as completed only once both exist.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cvit.config.registry import with_argument_defaults
from cvit.config.schema import ExperimentConfig
from cvit.errors import RunDirError
from cvit.run.atomic import atomic_path, write_json, write_text
from cvit.run.document import RunDocument, read_run_document

# Keys that cannot change a run's results: a resumed run may differ in them.
RESULT_NEUTRAL_KEYS = ("run.", "data.num_workers", "data.verify_images", "train.log_every_n_steps", "eval.meteor")


# what torch.load(weights_only=True) reloads (besides dicts, lists and tuples of these)
RELOADABLE = (type(None), bool, int, float, str, bytes, torch.Tensor, torch.Size, torch.dtype, torch.device)


def check_reloadable(value: Any, where: str) -> None:
    """Raise TypeError naming the first part of `value` (at `where`, e.g. "callback 'ewc' state") that
    `torch.load(weights_only=True)` would refuse at resume: anything but RELOADABLE in dicts, lists and tuples."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; use str or int keys")
            check_reloadable(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_reloadable(item, f"{where}[{index}]")
    elif not isinstance(value, RELOADABLE):
        raise TypeError(f"{where} is a {type(value).__name__}, which a resume cannot reload "
                        "(torch.load(weights_only=True)); keep tensors, numbers, strings, lists and dicts")


def stage_name(index: int, name: str) -> str:
    return f"{index:02d}_{name}"


class RunDirectory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def matrix_file(self) -> Path:
        return self.path / "matrix.json"

    @property
    def exists(self) -> bool:
        """Whether a run was started here (its config is recorded)."""
        return (self.path / "config.yaml").is_file()

    def check_new(self) -> None:
        """A new run must not overwrite an existing one."""
        if self.exists:
            raise RunDirError(
                f"{self.path}: run directory already exists; continue it with --resume {self.path} "
                "or choose another run.name"
            )

    def create(self, config_yaml: str) -> None:
        self.check_new()
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / "config.yaml", config_yaml)

    def check_resumable(self, config_yaml: str) -> None:
        """The stored config must equal this run's config; lists the differing keys otherwise."""
        stored_file = self.path / "config.yaml"
        if not self.exists:
            raise RunDirError(f"{self.path}: not a run directory (no config.yaml)")
        stored = with_defaults(yaml.safe_load(stored_file.read_text()))
        current = with_defaults(yaml.safe_load(config_yaml))
        differences = sorted(k for k in diff_keys(stored, current) if not k.startswith(RESULT_NEUTRAL_KEYS))
        if differences:
            raise RunDirError(
                f"{self.path}: made by a different config; differing keys: {', '.join(differences[:10])}"
            )

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete what a killed process left mid-write (`.<name>.*.tmp` / `.<name>.old`); returns them."""
        stale = [p for p in self.path.rglob(".*") if p.name.endswith((".tmp", ".old"))]
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return stale

    def load_matrix(self) -> RunDocument | None:
        """The run document (matrix.json), or None before the first stage has completed."""
        return read_run_document(self.matrix_file) if self.matrix_file.is_file() else None

    def stage_dir(self, index: int, name: str) -> Path:
        return self.path / "stages" / stage_name(index, name)

    def save_stage(self, index: int, name: str, pool, callback_states: dict[str, Any]) -> None:
        for key, state in callback_states.items():
            check_reloadable(state, f"callback {key!r} state_dict()")
        with atomic_path(self.stage_dir(index, name)) as staged:
            (staged / "adapters").mkdir(parents=True)
            pool.save(staged / "adapters")
            torch.save(callback_states, staged / "callbacks.pt")

    def load_stage(self, index: int, name: str, pool) -> dict[str, Any]:
        directory = self.stage_dir(index, name)
        pool.load(directory / "adapters")
        return torch.load(directory / "callbacks.pt", weights_only=True)

    def save_predictions(self, index: int, name: str, task: str, rows: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        write_text(self.path / "predictions" / stage_name(index, name) / f"{task}.jsonl", lines)

    def save_matrix(self, doc: RunDocument) -> None:
        write_json(self.matrix_file, doc.to_json())


def with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the keys the schema and the built-in callbacks' arguments have gained since filled in at
    their defaults (a run made before a key existed ran as its default says), or as stored where it no longer fits
    the schema."""
    try:
        config = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(ExperimentConfig), stored))
    except OmegaConfBaseException:
        return stored
    return {**config, "callbacks": with_argument_defaults(config.get("callbacks") or {})}


def config_differences(run_a: Path, run_b: Path) -> list[str]:
    """The config keys in which two run directories' config.yaml differ, those that cannot change results left out;
    RunDirError naming a folder without one."""
    configs = []
    for run in (run_a, run_b):
        path = Path(run) / "config.yaml"
        if not path.is_file():
            raise RunDirError(f"{run}: not a run directory (no config.yaml)")
        configs.append(with_defaults(yaml.safe_load(path.read_text())))
    return sorted(k for k in diff_keys(*configs) if not k.startswith(RESULT_NEUTRAL_KEYS))


def diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return set().union(*(diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k) for k in keys))
    return set() if a == b else {prefix or "<root>"}
