"""Which files a block of code opens for writing, seen through Python's audit hook on `open` (the suite runs as
root, for whom a read-only folder is still writable, so "writes nothing there" is checked this way; files
written by child processes such as the Java scorers are not seen)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_recording: list[list[str]] = []  # the open recordings (an audit hook cannot be removed once added)
_installed = False


def _on_event(event: str, args: tuple) -> None:
    if not _recording or event != "open":
        return
    path, mode, flags = args
    if not isinstance(path, (str, bytes, os.PathLike)):
        return  # an open file descriptor
    if any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR)):
        for paths in _recording:
            paths.append(os.fsdecode(path))


@contextmanager
def recorded_writes() -> Iterator[list[str]]:
    """A list that fills with every path opened for writing inside the `with` block."""
    global _installed
    if not _installed:
        sys.addaudithook(_on_event)
        _installed = True
    paths: list[str] = []
    _recording.append(paths)
    try:
        yield paths
    finally:
        _recording.remove(paths)
