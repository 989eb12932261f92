"""Wall time and answer loss of each training batch, for the run document's `timing` and `answer_loss` and the
benchmarks."""

from __future__ import annotations

import statistics
import time

import lightning as L

ANSWER_LOSS = "loss/answer"  # what ContinualModule.training_step logs: the answer tokens' mean cross-entropy


class StepRecord(L.Callback):
    """Seconds from a training batch's start to the end of every callback's batch-end hook (listed last, so the
    method callbacks' per-step work, e.g. the EMA update, is inside), and the batch's answer loss (nats per answer
    token, the method's own loss terms excluded)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.losses: list[float] = []
        self.started = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self.started)
        loss = trainer.callback_metrics.get(ANSWER_LOSS)
        if loss is not None:
            self.losses.append(float(loss))

    def median(self, warmup: int = 5) -> float:
        """The median batch time after the first `warmup` batches (all of them when there are no more); 0.0 when
        none ran (a fit resumed at its end)."""
        times = self.times[warmup:] or self.times
        return statistics.median(times) if times else 0.0

    def loss_summary(self, share: float = 0.1) -> dict[str, float] | None:
        """{"start": mean answer loss of the first `share` of the batches, "end": of the last `share`} (at least one
        batch each), or None when no batch ran (a fit resumed at its end)."""
        if not self.losses:
            return None
        count = max(1, round(share * len(self.losses)))
        return {"start": round(statistics.fmean(self.losses[:count]), 5),
                "end": round(statistics.fmean(self.losses[-count:]), 5)}
