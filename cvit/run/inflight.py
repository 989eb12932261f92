"""In-flight (mid-task) checkpoints: Lightning's ModelCheckpoint every N steps, written atomically.

One file per run, `<run>/inflight/<stage>/inflight.ckpt`, replaced at each save and deleted once the
stage is completed and saved. `cvit.module.ContinualModule.on_save_checkpoint` keeps only trainable
weights in it; the sampler (`cvit.data.sampler`) restarts the epoch where the checkpoint left it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cvit.run.atomic import write_with

FILENAME = "inflight"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint writer, through a temporary file renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        write_with(Path(path), lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp))


def inflight_callback(directory: Path, every_n_steps: int) -> ModelCheckpoint:
    """Keeps the latest checkpoint only, replaced every `every_n_steps` optimizer steps."""
    return ModelCheckpoint(
        dirpath=directory, filename=FILENAME, every_n_train_steps=every_n_steps, save_top_k=1,
        enable_version_counter=False, save_on_train_epoch_end=False,
    )


def inflight_file(directory: Path) -> Path | None:
    path = directory / f"{FILENAME}.ckpt"
    return path if path.is_file() else None
