"""A run's human-readable report, report.md plus the heatmap matrix.png, and tables comparing methods."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cvit.eval.metrics import METRIC_LABELS, format_value, run_metrics
from cvit.eval.mif import mean_following
from cvit.run.atomic import write_text, write_with
from cvit.run.document import RunDocument, read_run_document
from cvit.run.provenance import setup_lines


def markdown_table(header: list[str], body: list[list[str]], numeric: bool = True) -> str:
    """A padded markdown table; the first column left-aligned, the others right-aligned if `numeric`."""
    widths = [max(len(row[c]) for row in (header, *body)) for c in range(len(header))]
    right = [numeric and c > 0 for c in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "|".join("-" * (w + 1) + (":" if r else "-") for w, r in zip(widths, right, strict=True))
    return "\n".join([line(header), f"|{rule}|", *map(line, body)])


def heatmap_figure(
    tasks: list[str], matrix: list[list[float]], title: str = "", row_labels: list[str] | None = None
) -> Figure:
    """Heatmap of matrix[j][i] (row j: after training stage j; column i: task i) on a 0..100 colour
    scale, every cell annotated, cells past a row's end left blank. Rows are labelled "after <tasks[j]>"
    unless `row_labels` are given. Drawn on its own Agg canvas, outside pyplot's global state."""
    figure = Figure(figsize=(2.5 + 0.9 * len(tasks), 1.5 + 0.55 * len(matrix)), layout="constrained")
    FigureCanvasAgg(figure)
    draw_heatmap(figure, figure.add_subplot(), tasks, matrix, title, row_labels)
    return figure


def draw_heatmap(figure: Figure, axes, tasks: list[str], matrix: list[list[float]], title: str = "",
                 row_labels: list[str] | None = None) -> None:
    """`heatmap_figure`'s drawing on `axes` of `figure` (with its colour bar), e.g. one cell of a grid."""
    if not matrix or any(len(row) > len(tasks) for row in matrix):
        raise ValueError(f"need 1 or more rows of at most {len(tasks)} scores, got {len(matrix)} rows")
    labels = row_labels if row_labels is not None else [f"after {task}" for task in tasks[: len(matrix)]]
    values = np.full((len(matrix), len(tasks)), np.nan)
    for j, row in enumerate(matrix):
        values[j, : len(row)] = row
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    image = axes.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for (j, i), value in np.ndenumerate(values):
        if not np.isnan(value):
            axes.text(i, j, f"{value:.1f}", ha="center", va="center", fontsize=8,
                      color="white" if value < 60 else "black")
    axes.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
    axes.set_yticks(range(len(matrix)), labels)
    axes.set_xlabel("evaluated task")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="score")


def row_labels(doc: RunDocument, count: int) -> list[str]:
    """Row labels "after <stage>" for the first `count` stages."""
    return [f"after {stage}" for stage in doc.stages[:count]]


def _score_table(columns: list[str], labels: list[str], rows: list[list[float]]) -> str:
    body = [[label, *map(format_value, row), *[""] * (len(columns) - len(row))]
            for label, row in zip(labels, rows, strict=True)]
    return markdown_table(["", *columns], body)


def _metrics_lines(doc: RunDocument) -> list[str]:
    metrics = run_metrics(doc)
    if doc.mode == "sequential":
        note = (f"BWT is divided by {doc.protocol['bwt_denominator']}, Forgetting by T-1 (the tasks before the "
                "last).")
    else:
        note = f"A single-stage {doc.mode} run: only Last is defined."
    header = ["metric", "all tasks"]
    columns = [metrics]
    if "caption" in doc.scorers.values():
        header.append("without captions")
        columns.append(run_metrics(doc, ("caption",)))
    body = [[METRIC_LABELS.get(key, key), *(format_value(c.get(key)) for c in columns)] for key in metrics]
    return ["## Continual metrics", "", markdown_table(header, body), "", note, ""]


def _scorer_lines(doc: RunDocument) -> list[str]:
    if not doc.scorers:
        return []
    table = markdown_table(["task", "scorer"], [list(item) for item in doc.scorers.items()], numeric=False)
    relaxed = ["Relaxed matching is on for vqa, exact and classification.", ""] if doc.relaxed else []
    return ["## Scorers", "", table, "", *relaxed]


def _protocol_lines(doc: RunDocument) -> list[str]:
    protocol = doc.protocol
    labels = {"follows": "comparable with", "base_model": "base model", "caption_metric": "caption number",
              "bwt_denominator": "BWT divides by"}
    lines = [f"- {label}: {protocol[key]}" for key, label in labels.items() if protocol.get(key)]
    lines += [f"- {note}" for note in protocol.get("notes") or []]
    return ["## Protocol", "", *lines, ""] if lines else []


def _mif_lines(doc: RunDocument) -> list[str]:
    """Instruction following (SMoLoRA's MIF) of the latest stage: per task and the mean."""
    trained = (doc.mif or [[]])[-1]  # the tasks evaluated at the latest stage, in stream order
    unseen = (doc.unseen_mif or [[]])[-1]
    pairs = [*zip(doc.tasks, trained, strict=False), *zip(doc.unseen_tasks, unseen, strict=False)]
    judged = [(task, rate) for task, rate in pairs if rate is not None]
    if not judged:
        return []
    table = markdown_table(["task", "follows (%)"], [[t, format_value(r)] for t, r in judged])
    means = f"MIF (trained tasks): {format_value(mean_following(trained))}; all judged tasks: " \
            f"{format_value(mean_following(rate for _, rate in judged))}."
    return ["## Instruction following (MIF) at the latest evaluation", "", table, "", means, ""]


def _unseen_lines(doc: RunDocument) -> list[str]:
    if not doc.unseen_tasks or not any(doc.unseen):
        return []
    return ["## Unseen tasks", "", _score_table(doc.unseen_tasks, row_labels(doc, len(doc.unseen)), doc.unseen), ""]


def _parameter_lines(doc: RunDocument) -> list[str]:
    """Adapter parameters per stage: trained in the stage, stored after it, loaded by inference after it."""
    rows = doc.parameters
    if not rows:
        return []
    body = [[label, *(f"{row[key]:,}" for key in ("trainable", "stored", "inference"))]
            for label, row in zip(row_labels(doc, len(rows)), rows, strict=True)]
    table = markdown_table(["", "trainable", "stored", "loaded at inference"], body)
    return ["## Parameters", "", "Adapter parameters (LoRA, the trained multimodal projector, methods' keys and "
            "projectors), not the frozen base model's.", "", table, ""]


def _details_lines(doc: RunDocument) -> list[str]:
    lines = []
    for task, stages in doc.details.items():
        stage, scores = list(stages.items())[-1]
        extra = ", ".join(f"{key} {value:.2f}" for key, value in scores.items() if key != "score")
        if extra:
            lines.append(f"- {task} (after {stage}): {extra}")
    return ["## Scorer outputs at the latest evaluation", "", *lines, ""] if lines else []


def report_markdown(doc: RunDocument, image: str | None) -> str:
    """report.md's text for a run document; `image` is the heatmap's file name, if drawn."""
    tasks, matrix = doc.tasks, doc.matrix
    total = len(doc.stages)
    progress = f"{len(matrix)} of {total} stages completed" + (" (an incomplete run)" * (len(matrix) < total))
    lines = [
        f"# {doc.method} on {doc.benchmark}", "",
        f"{progress}. Scores are 0-100 (caption tasks: CIDEr x100, which can exceed 100).", "",
    ]
    if matrix:
        lines += ["## Accuracy matrix", "", "Row: after training that stage; column: evaluated task.", ""]
        lines += [_score_table(tasks, row_labels(doc, len(matrix)), matrix), ""]
        lines += [f"![accuracy matrix]({image})", ""] if image else []
        lines += _metrics_lines(doc)
    else:
        lines += ["No stage has completed yet.", ""]
    lines += _mif_lines(doc) + _protocol_lines(doc) + setup_lines(doc.setup) + _scorer_lines(doc)
    lines += _unseen_lines(doc) + _parameter_lines(doc)
    lines += _details_lines(doc)
    return "\n".join(lines).rstrip() + "\n"


def write_report(run_dir: Path) -> Path:
    """Write run_dir/report.md and (once a stage is done) run_dir/matrix.png from run_dir/matrix.json,
    each atomically; return the report's path. DataError if matrix.json is missing or invalid."""
    run_dir = Path(run_dir)
    doc = read_run_document(run_dir / "matrix.json")
    image = None
    if doc.matrix:
        title = f"{doc.method} on {doc.benchmark}"
        figure = heatmap_figure(doc.tasks, doc.matrix, title, row_labels(doc, len(doc.matrix)))
        image = "matrix.png"
        write_with(run_dir / image, lambda path: figure.savefig(path, format="png", dpi=120))
    report = run_dir / "report.md"
    write_text(report, report_markdown(doc, image))
    return report
