"""Crash-safe file writes: write to a temporary sibling, fsync, then rename over the target.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
half-written file, whatever kills the process.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path next to `target`; on success rename it onto `target`.

    Works for files and for directories (an existing target directory is replaced whole).
    On any exception the temporary is removed and `target` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staged = tmp / target.name
    try:
        yield staged
        if target.is_dir():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(staged, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if staged.is_file():
                with open(staged, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(target: str | Path, text: str) -> None:
    """Atomically write `text` (UTF-8) to `target`."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, obj) -> None:
    """Atomically write `obj` as indented JSON."""
    write_text(target, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_with(target: str | Path, writer: Callable[[Path], None]) -> None:
    """Atomically produce `target` by calling `writer(tmp_path)` (e.g. torch.save, savefig)."""
    with atomic_path(target) as tmp:
        writer(tmp)
