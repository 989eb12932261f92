"""`cvit compare RUN_DIR ... [--out DIR]`: several runs side by side. A markdown table of their continual metrics
(all tasks, and without the caption tasks, whose CIDEr x100 is not on the 0-100 scale), instruction following,
adapter parameters and run time; with `--out`, also comparison.md, tradeoff.png (Last against BWT on the 0-100 tasks,
one point per sequential run, a line per single-stage run) and matrices.png (every run's accuracy matrix in a grid
of heatmaps)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cvit.eval.metrics import run_metrics
from cvit.reports.run_report import draw_heatmap, markdown_table, metrics_table, row_labels
from cvit.run.atomic import write_text, write_with
from cvit.run.document import RunDocument, read_run_document


def read_runs(run_dirs: list[Path]) -> dict[str, RunDocument]:
    """Each run's document by its folder's name (DataError naming a folder without a readable matrix.json)."""
    return {Path(run).name: read_run_document(Path(run) / "matrix.json") for run in run_dirs}


def parameters_table(docs: dict[str, RunDocument]) -> str:
    """A row per run: the last stage's adapter parameter counts and the run's time (the sum of its completed
    stages' train + evaluation seconds)."""
    rows = []
    for name, doc in docs.items():
        last = doc.parameters[-1] if doc.parameters else {}
        counts = [f"{last[k]:,}" if k in last else "-" for k in ("trainable", "stored", "inference")]
        rows.append([name, *counts, f"{sum(doc.seconds):.0f}"])
    return markdown_table(["run", "trainable", "stored", "inference", "seconds"], rows)


def has_captions(docs: dict[str, RunDocument]) -> bool:
    return any(scorer == "caption" for doc in docs.values() for scorer in doc.scorers.values())


def comparison_markdown(docs: dict[str, RunDocument]) -> str:
    captions = has_captions(docs)
    lines = ["Continual metrics, all tasks" + (" (caption: CIDEr x100):" if captions else ":"),
             metrics_table({name: run_metrics(doc) for name, doc in docs.items()})]
    if captions:
        lines += ["", "The same without the caption tasks (every score 0-100):",
                  metrics_table({name: run_metrics(doc, ("caption",)) for name, doc in docs.items()})]
    lines += ["", "Adapter parameters after the last stage (trained in it / stored / loaded at inference), run time:",
              parameters_table(docs)]
    return "\n".join(lines) + "\n"


def tradeoff_figure(docs: dict[str, RunDocument]) -> Figure:
    """Last against BWT on the 0-100 tasks (caption tasks left out where there are any): a labelled point per
    sequential run, a dashed line at the Last of each single-stage run (zero-shot, joint: no BWT)."""
    exclude = ("caption",) if has_captions(docs) else ()
    figure = Figure(figsize=(7, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, doc in docs.items():
        metrics = run_metrics(doc, exclude)
        if metrics["last"] is None:
            continue
        if metrics["bwt"] is None:
            axes.axhline(metrics["last"], linestyle="--", linewidth=0.8, color="grey")
            axes.annotate(name, (0.01, metrics["last"]), xycoords=("axes fraction", "data"), xytext=(0, 3),
                          textcoords="offset points", fontsize=7, color="grey")
            continue
        axes.scatter(metrics["bwt"], metrics["last"])
        axes.annotate(name, (metrics["bwt"], metrics["last"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
    axes.set_xlabel("BWT (higher: less forgetting)")
    axes.set_ylabel("Last (ACC" + (", without the caption tasks)" if exclude else ")"))
    axes.set_title("accuracy against forgetting")
    axes.grid(alpha=0.3)
    return figure


def matrices_figure(docs: dict[str, RunDocument]) -> Figure:
    """Every run's accuracy matrix, a heatmap each, in a grid of up to three columns."""
    shown = {name: doc for name, doc in docs.items() if doc.matrix}
    if not shown:
        raise ValueError("no run has a completed stage")
    columns = min(3, len(shown))
    grid_rows = math.ceil(len(shown) / columns)
    tasks = max(len(doc.tasks) for doc in shown.values())
    figure = Figure(figsize=(columns * (2.5 + 0.9 * tasks), grid_rows * (1.5 + 0.55 * tasks)), layout="constrained")
    FigureCanvasAgg(figure)
    for index, (name, doc) in enumerate(shown.items()):
        axes = figure.add_subplot(grid_rows, columns, index + 1)
        draw_heatmap(figure, axes, doc.tasks, doc.matrix, name, row_labels(doc, len(doc.matrix)))
    return figure


def compare_runs(run_dirs: list[Path], out: Path | None = None, document: str = "comparison.md",
                 preamble: str = "") -> str:
    """The comparison's markdown; with `out`, also written there as `document` (after `preamble`) with its two
    figures (each file atomically)."""
    docs = read_runs(run_dirs)
    text = comparison_markdown(docs)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / document,
                   preamble + text + "\n![Last against BWT](tradeoff.png)\n\n![matrices](matrices.png)\n")
        for file, figure in (("tradeoff.png", tradeoff_figure(docs)), ("matrices.png", matrices_figure(docs))):
            write_with(out / file, lambda path, f=figure: f.savefig(path, format="png", dpi=110))
    return text
