"""Wall time of each training batch, for the run document's `timing` and the benchmarks."""

from __future__ import annotations

import statistics
import time

import lightning as L


class StepClock(L.Callback):
    """Seconds from a training batch's start to the end of every callback's batch-end hook (listed last, so the
    method callbacks' per-step work, e.g. the EMA update, is inside)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.started = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self.started)

    def median(self, warmup: int = 5) -> float:
        """The median batch time after the first `warmup` batches (all of them when there are no more); 0.0 when
        none ran (a fit resumed at its end)."""
        times = self.times[warmup:] or self.times
        return statistics.median(times) if times else 0.0
