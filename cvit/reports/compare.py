"""`cvit compare RUN_DIR ... [--seeds RUN_DIR ...] [--out DIR]`: several runs side by side. A markdown table of their
continual metrics (all tasks, and without the caption tasks, whose CIDEr x100 is not on the 0-100 scale), instruction
following, adapter parameters and run time; with `--out`, also comparison.md, tradeoff.png (Last against BWT on the
0-100 tasks, one point per sequential run, a line per single-stage run) and matrices.png (every run's accuracy matrix
in a grid of heatmaps).

A seed group (`--seeds`, one per occurrence) is several runs of one configuration that differ only in `train.seed`:
it is one row, each metric its mean ± the sample standard deviation over the seeds (n - 1 in the denominator); its
point in tradeoff.png carries the standard deviations as error bars and matrices.png shows its first run.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cvit.errors import ConfigError
from cvit.eval.metrics import METRIC_LABELS, format_value, run_metrics
from cvit.reports.run_report import draw_heatmap, markdown_table, row_labels
from cvit.run.atomic import write_text, write_with
from cvit.run.document import RunDocument, read_run_document
from cvit.run.rundir import config_differences

TABLE_METRICS = ("last", "maa", "bwt", "forgetting", "new_acc", "mif")


@dataclass(frozen=True)
class Group:
    """One row of a comparison: a run, or the runs of one configuration under several seeds."""

    docs: tuple[RunDocument, ...]

    def metrics(self, exclude: tuple[str, ...] = ()) -> dict[str, tuple[float, float | None] | None]:
        """Each metric's (mean, sample standard deviation; None for one run) over the group's runs; None where a
        run does not define it."""
        per_run = [run_metrics(doc, exclude) for doc in self.docs]
        result = {}
        for key in per_run[0]:
            values = [metrics[key] for metrics in per_run]
            result[key] = None if None in values else (
                statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)
        return result


def read_groups(groups: list[list[Path]]) -> dict[str, Group]:
    """Each group's documents by its label: a run's folder name, or for a seed group its first folder's name and
    its seeds (DataError naming a folder without a readable matrix.json; ConfigError for a seed group whose runs
    differ in more than the seed or share a seed)."""
    result = {}
    for runs in groups:
        docs = tuple(read_run_document(Path(run) / "matrix.json") for run in runs)
        label = Path(runs[0]).name
        if len(runs) > 1:
            check_seed_group([Path(run) for run in runs], [doc.setup.get("seed") for doc in docs])
            label += f" (seeds {', '.join(str(doc.setup.get('seed')) for doc in docs)})"
        result[label] = Group(docs)
    return result


def check_seed_group(runs: list[Path], seeds: list[int | None]) -> None:
    """Refuse a seed group whose runs' configs differ in more than `train.seed` (and what cannot change results),
    or whose runs share a seed."""
    for run in runs[1:]:
        differences = [key for key in config_differences(runs[0], run) if key != "train.seed"]
        if differences:
            raise ConfigError(f"--seeds: {run} and {runs[0]} differ in more than the seed: "
                              f"{', '.join(differences[:10])}")
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds: runs share a seed ({', '.join(map(str, seeds))}): {', '.join(map(str, runs))}")


def mean_cell(value: tuple[float, float | None] | None) -> str:
    """"mean" (two decimals), "mean ± std" for a seed group, "-" where undefined."""
    if value is None:
        return "-"
    mean, spread = value
    return format_value(mean) if spread is None else f"{mean:.2f} ± {spread:.2f}"


def metrics_table(groups: dict[str, Group], exclude: tuple[str, ...] = ()) -> str:
    """A row per run or seed group, columns last, maa, bwt, forgetting, new_acc, mif (see `mean_cell`); tasks
    scored by `exclude` left out."""
    header = ["method", *(METRIC_LABELS[key] for key in TABLE_METRICS)]
    body = []
    for name, group in groups.items():
        metrics = group.metrics(exclude)
        body.append([name, *(mean_cell(metrics[key]) for key in TABLE_METRICS)])
    return markdown_table(header, body)


def parameters_table(groups: dict[str, Group]) -> str:
    """A row per run or seed group: the last stage's adapter parameter counts (the first run's) and the run's time
    (the sum of its completed stages' train + evaluation seconds; a seed group's mean)."""
    rows = []
    for name, group in groups.items():
        doc = group.docs[0]
        last = doc.parameters[-1] if doc.parameters else {}
        counts = [f"{last[k]:,}" if k in last else "-" for k in ("trainable", "stored", "inference")]
        rows.append([name, *counts, f"{statistics.fmean(sum(d.seconds) for d in group.docs):.0f}"])
    return markdown_table(["run", "trainable", "stored", "inference", "seconds"], rows)


def has_captions(groups: dict[str, Group]) -> bool:
    return any(scorer == "caption" for group in groups.values() for scorer in group.docs[0].scorers.values())


def comparison_markdown(groups: dict[str, Group]) -> str:
    captions = has_captions(groups)
    lines = ["Continual metrics, all tasks" + (" (caption: CIDEr x100):" if captions else ":"),
             metrics_table(groups)]
    if captions:
        lines += ["", "The same without the caption tasks (every score 0-100):", metrics_table(groups, ("caption",))]
    lines += ["", "Adapter parameters after the last stage (trained in it / stored / loaded at inference), run time:",
              parameters_table(groups)]
    return "\n".join(lines) + "\n"


def tradeoff_figure(groups: dict[str, Group]) -> Figure:
    """Last against BWT on the 0-100 tasks (caption tasks left out where there are any): a labelled point per
    sequential run (a seed group's mean, with its standard deviations as error bars), a dashed line at the Last of
    each single-stage run (zero-shot, joint: no BWT)."""
    exclude = ("caption",) if has_captions(groups) else ()
    figure = Figure(figsize=(7, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, group in groups.items():
        metrics = group.metrics(exclude)
        if metrics["last"] is None:
            continue
        (last, last_spread) = metrics["last"]
        if metrics["bwt"] is None:
            axes.axhline(last, linestyle="--", linewidth=0.8, color="grey")
            axes.annotate(name, (0.01, last), xycoords=("axes fraction", "data"), xytext=(0, 3),
                          textcoords="offset points", fontsize=7, color="grey")
            continue
        bwt, bwt_spread = metrics["bwt"]
        axes.scatter(bwt, last)
        if last_spread is not None:
            axes.errorbar(bwt, last, xerr=bwt_spread, yerr=last_spread, fmt="none", ecolor="grey", linewidth=0.8)
        axes.annotate(name, (bwt, last), textcoords="offset points", xytext=(4, 3), fontsize=7)
    axes.set_xlabel("BWT (higher: less forgetting)")
    axes.set_ylabel("Last (ACC" + (", without the caption tasks)" if exclude else ")"))
    axes.set_title("accuracy against forgetting")
    axes.grid(alpha=0.3)
    return figure


def matrices_figure(groups: dict[str, Group]) -> Figure:
    """Every run's accuracy matrix (a seed group's first run), a heatmap each, in a grid of up to three columns."""
    shown = {name: group.docs[0] for name, group in groups.items() if group.docs[0].matrix}
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


def compare_runs(runs: list[Path | list[Path]], out: Path | None = None, document: str = "comparison.md",
                 preamble: str = "") -> str:
    """The comparison's markdown of `runs` (each a run directory, or a list of the run directories of one seed
    group); with `out`, also written there as `document` (after `preamble`) with its two figures (each file
    atomically)."""
    docs = read_groups([[run] if isinstance(run, Path) else list(run) for run in runs])
    text = comparison_markdown(docs)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / document,
                   preamble + text + "\n![Last against BWT](tradeoff.png)\n\n![matrices](matrices.png)\n")
        for file, figure in (("tradeoff.png", tradeoff_figure(docs)), ("matrices.png", matrices_figure(docs))):
            write_with(out / file, lambda path, f=figure: f.savefig(path, format="png", dpi=110))
    return text
