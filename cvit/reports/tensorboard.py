"""Continual-level TensorBoard logging: per-task scores after each stage, metrics, matrix heatmap."""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from cvit.eval.metrics import run_metrics
from cvit.reports.run_report import heatmap_figure, row_labels
from cvit.run.document import RunDocument


class ContinualBoard:
    def __init__(self, log_dir: Path) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_stage(self, index: int, doc: RunDocument) -> None:
        """Scalars `score/<task>` and `metrics/<key>` at step = stage index; the heatmap figure."""
        for task, score in zip(doc.tasks, doc.matrix[index], strict=False):
            self.writer.add_scalar(f"score/{task}", score, index)
        for task, score in zip(doc.unseen_tasks, doc.unseen[index], strict=False):
            self.writer.add_scalar(f"unseen/{task}", score, index)
        for key, value in run_metrics(doc).items():
            if value is not None:
                self.writer.add_scalar(f"metrics/{key}", value, index)
        figure = heatmap_figure(doc.tasks, doc.matrix, row_labels=row_labels(doc, len(doc.matrix)))
        self.writer.add_figure("matrix", figure, index)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
