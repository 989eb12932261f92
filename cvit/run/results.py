"""`make results`: every method and baseline, and the composed methods, on the embedded default (seeded), side by
side in results/synthetic.md with its two plots. The runs are the demo's (work/runs/demo-<method>; a finished one
is reused), so `make demo`'s figures are rows of this table."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cvit.reports.compare import compare_runs
from cvit.run.demo import base_model_built, prepare_world, run_methods
from cvit.run.document import read_run_document
from cvit.run.provenance import cpu_model, library_versions
from cvit.synthetic.writer import SyntheticSizes

# each paper's method (its main variant), the baselines, then the composed methods (configs/method/composed/)
METHODS = ("zeroshot", "seqlora", "joint", "replay", "ewc", "lwf", "moelora", "olora", "llaca", "proglora_static",
           "proglora_dynamic", "hide", "smolora", "composed/proglora_ema", "composed/smolora_replay",
           "composed/moelora_ema")
# The mixtures scaled to the tiny model by the papers' ratio: all experts together hold the SeqLoRA rank (8)
TINY_SCALE = ("callbacks.smolora.r=8", "callbacks.smolora.alpha=16", "callbacks.moelora.r=8",
              "callbacks.moelora.alpha=16")


def preamble(methods: tuple[str, ...], seconds: float, reused: int, built_world: bool, stage_seconds: float) -> str:
    """The file's header: what was run, on what, and how long this invocation took (`seconds` of wall time;
    `stage_seconds`, the runs' train + evaluation time summed over runs)."""
    sizes = SyntheticSizes()
    world = "writing the benchmark and base training included" if built_world else "the world already built"
    timing = (f"This invocation took {seconds / 60:.1f} min of wall time ({world}"
              + (f"; {reused} finished runs reused" if reused else "")
              + f") on {cpu_model()} ({os.cpu_count()} cores); the runs' stages took {stage_seconds / 60:.1f} min"
              + " summed over runs.")
    versions = ", ".join(f"{name} {version}" for name, version in library_versions().items())
    return "\n".join([
        "# Every method on the synthetic stream",
        "",
        "Written by `make results` (`cvit results`); do not edit by hand. Seeded (seed 0), official scoring,",
        f"single-type instructions, the default order; {sizes.train} training and {sizes.test} test records per task;",
        "the tiny LLaVA of configs/model/tiny_llava.yaml with its multimodal projector trained. Mixtures scaled to the",
        f"tiny model: {' '.join(TINY_SCALE)}. Each row is configs/method/<name>.yaml",
        f"({', '.join(methods)}); its run is work/runs/demo-<name> (report.md, matrix.json).",
        timing,
        f"Libraries: {versions}. Another CPU type or other library versions can give other figures: base",
        "training's 1500 steps amplify floating-point differences.",
        "",
        "",
    ])


def run_results(work: Path, configs: Path, out: Path, methods: tuple[str, ...] = METHODS, jobs: int = 1) -> Path:
    """Run (or reuse) every method, `jobs` at a time (`cvit.run.demo.run_methods`), then write `out`/synthetic.md,
    tradeoff.png and matrices.png; returns the markdown's path."""
    started = time.perf_counter()
    built_world = not base_model_built(work)
    data, model = prepare_world(work)
    reused = sum((work / "runs" / f"demo-{Path(m).name}" / "matrix.json").is_file() for m in methods)
    runs = list(run_methods(methods, jobs, work, configs, data, model, "single", TINY_SCALE).values())
    stage_seconds = sum(sum(read_run_document(run / "matrix.json").seconds) for run in runs)
    header = preamble(methods, time.perf_counter() - started, reused, built_world, stage_seconds)
    compare_runs(runs, out, "synthetic.md", header)
    return out / "synthetic.md"
