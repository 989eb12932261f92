"""`make scaling`: each method's cost as the stream grows, on the long synthetic stream (12 training tasks,
configs/benchmark/synthetic_long.yaml) from the base-trained tiny model.

Per method, after 3, 6 and 12 tasks: the adapter parameters stored and used at inference (the run document's
`parameters`), the median training step time and the evaluation throughput (test items generated and scored per
second over the seen tasks; the run document's `timing`). Tasks are short (STEPS optimizer steps, TEST test items
each): these runs measure cost, not scores. Writes scaling.md and scaling.png (to --out, default WORK/scaling;
the runs stay in WORK/scaling/runs) and prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cvit.config.load import load_config
from cvit.eval.captions import CaptionScorer
from cvit.reports.run_report import markdown_table
from cvit.run.atomic import write_text, write_with
from cvit.run.demo import applicable
from cvit.run.document import RunDocument, read_run_document
from cvit.run.loop import ContinualRun
from cvit.run.results import TINY_SCALE
from cvit.run.world import prepare_world
from cvit.synthetic.tasks import LONG_TASKS
from cvit.synthetic.writer import SyntheticSizes, is_current, make_synthetic

REPO = Path(__file__).resolve().parents[1]
METHODS = ("seqlora", "replay", "ewc", "lwf", "moelora", "olora", "llaca", "proglora_static", "proglora_dynamic",
           "hide", "smolora")
CHECKPOINTS = (3, 6, 12)
STEPS, TEST, BATCH = 10, 10, 16
SIZES = SyntheticSizes(train=STEPS * BATCH, test=TEST, base=0)


def run_long(method: str, data: Path, model: Path, runs: Path) -> RunDocument:
    """The method's run on the long stream (a finished run is reused, a stopped one continues)."""
    configs = REPO / "configs"
    files = [configs / "model" / "tiny_llava.yaml", configs / "benchmark" / "synthetic_long.yaml",
             configs / "method" / f"{method}.yaml"]
    overrides = [f"benchmark.root={data}", f"model.path={model}", f"run.root={runs}", f"run.name={method}",
                 f"data.batch_size={BATCH}", "eval.unseen=false"]
    cfg, _ = load_config(files, overrides)
    cfg, sources = load_config(files, overrides + applicable(cfg, TINY_SCALE))
    run = ContinualRun(cfg, sources)
    return read_run_document(run.run(resume=run.run_dir.exists) / "matrix.json")


def throughput(timing: dict[str, float]) -> float:
    return timing["eval_items"] / timing["eval_seconds"]


def growth(values: list[float]) -> str:
    """The value after the last checkpoint over the value after the first, e.g. x4.0."""
    return f"x{values[-1] / values[0]:.1f}" if values[0] else "-"


def scaling_table(docs: dict[str, RunDocument]) -> str:
    """Parameters after each checkpoint, with their growth; step time and throughput as ratios to SeqLoRA's after the
    same task (the same task's batches and answers: a task's lengths set both)."""
    at = [k - 1 for k in CHECKPOINTS]
    base = docs["seqlora"]
    rows = []
    for method, doc in docs.items():
        stored = [doc.parameters[i]["stored"] for i in at]
        inference = [doc.parameters[i]["inference"] for i in at]
        steps = [doc.timing[i]["step_seconds"] / base.timing[i]["step_seconds"] for i in at]
        speed = [throughput(doc.timing[i]) / throughput(base.timing[i]) for i in at]
        rows.append([method, *(f"{v:,}" for v in stored), growth(stored), *(f"{v:,}" for v in inference),
                     growth(inference), *(f"{v:.2f}" for v in steps), *(f"{v:.2f}" for v in speed)])
    marks = [f"@{k}" for k in CHECKPOINTS]
    header = ["method", *(f"stored {m}" for m in marks), "growth", *(f"inference {m}" for m in marks), "growth",
              *(f"step x {m}" for m in marks), *(f"eval x {m}" for m in marks)]
    seqlora = ", ".join(f"{1000 * base.timing[i]['step_seconds']:.0f} ms and {throughput(base.timing[i]):.0f} items/s "
                        f"after {i + 1} tasks" for i in at)
    return markdown_table(header, rows) + f"\nSeqLoRA (the ratios' 1.00): {seqlora}.\n"


def scaling_figure(docs: dict[str, RunDocument]) -> Figure:
    """Four panels against the number of tasks trained: stored and inference parameters, step time, throughput."""
    figure = Figure(figsize=(12, 8), layout="constrained")
    FigureCanvasAgg(figure)
    panels = (("adapter parameters stored", lambda d, i: d.parameters[i]["stored"]),
              ("adapter parameters at inference", lambda d, i: d.parameters[i]["inference"]),
              ("training step (ms, median)", lambda d, i: 1000 * d.timing[i]["step_seconds"]),
              ("evaluation (test items / s)", lambda d, i: throughput(d.timing[i])))
    for index, (title, value) in enumerate(panels):
        axes = figure.add_subplot(2, 2, index + 1)
        for number, (method, doc) in enumerate(docs.items()):
            stages = range(len(doc.timing))
            axes.plot([i + 1 for i in stages], [value(doc, i) for i in stages], marker=".", label=method,
                      linestyle=("-", "--")[number // 10 % 2])  # the colour cycle has 10 colours
        axes.set_title(title)
        axes.set_xlabel("tasks trained")
        axes.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=7, ncols=2)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="work")
    parser.add_argument("--out", help="where scaling.md and scaling.png go (default: WORK/scaling)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="seqlora (the ratios' reference) first")
    args = parser.parse_args()
    work = Path(args.work)
    _, model = prepare_world(work)
    data, runs = work / "synthetic-long", work / "scaling" / "runs"
    out = Path(args.out) if args.out else work / "scaling"
    if not is_current(data, SIZES, LONG_TASKS):
        make_synthetic(data, SIZES, LONG_TASKS)
    # the first caption scoring in a process starts the PTB tokenizer's Java cold (about a second here): done once
    # first, so that it is not charged to the first method's evaluation
    CaptionScorer(meteor=False).score_items(["a red circle"], [["a red circle"]])
    docs = {method: run_long(method, data, model, runs) for method in args.methods}
    table = scaling_table(docs)
    text = (f"# Cost as the stream grows\n\nWritten by `make scaling` (scripts/scaling.py): the long synthetic "
            f"stream, {STEPS} steps of batch {BATCH} and {TEST} test items per task, seen tasks evaluated after "
            f"each task. growth: the value after {CHECKPOINTS[-1]} tasks over the value after {CHECKPOINTS[0]}; "
            f"step x and eval x: the training step time and the evaluation throughput (test items generated and "
            f"scored per second) over SeqLoRA's after the same task.\n\n"
            f"{table}\n![cost against tasks](scaling.png)\n")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "scaling.md", text)
    figure = scaling_figure(docs)
    write_with(out / "scaling.png", lambda path: figure.savefig(path, format="png", dpi=110))
    print(table)
    print(f"written: {out / 'scaling.md'}, {out / 'scaling.png'}")


if __name__ == "__main__":
    main()
