"""`make results`: every method and baseline, and the composed methods, on the embedded default (seeded), side by
side in results/synthetic.md with its two plots. The runs are the demo's (work/runs/demo-<method>; a finished one
is reused), so `make demo`'s figures are rows of this table."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from cvit.reports.compare import compare_runs
from cvit.run.demo import prepare_world, run_methods
from cvit.synthetic.writer import SyntheticSizes

# each paper's method (its main variant), the baselines, then the composed methods (configs/method/composed/)
METHODS = ("zeroshot", "seqlora", "joint", "replay", "ewc", "lwf", "moelora", "olora", "llaca", "proglora_static",
           "proglora_dynamic", "hide", "smolora", "composed/proglora_ema", "composed/smolora_replay",
           "composed/moelora_ema")
# The mixtures scaled to the tiny model by the papers' ratio: all experts together hold the SeqLoRA rank (8)
TINY_SCALE = ("callbacks.smolora.r=8", "callbacks.smolora.alpha=16", "callbacks.moelora.r=8",
              "callbacks.moelora.alpha=16")


def preamble(methods: tuple[str, ...], seconds: float, reused: int) -> str:
    sizes = SyntheticSizes()
    timing = (f"This invocation took {seconds / 60:.1f} min" + (f" ({reused} finished runs reused)" if reused else "")
              + f" on {platform.machine()} with the base-trained tiny model already built.")
    return "\n".join([
        "# Every method on the synthetic stream",
        "",
        "Written by `make results` (`cvit results`); do not edit by hand. Seeded (seed 0), official scoring,",
        f"single-type instructions, the default order; {sizes.train} training and {sizes.test} test records per task;",
        "the tiny LLaVA of configs/model/tiny_llava.yaml with its multimodal projector trained. Mixtures scaled to the",
        f"tiny model: {' '.join(TINY_SCALE)}. Each row is configs/method/<name>.yaml",
        f"({', '.join(methods)}); its run is work/runs/demo-<name> (report.md, matrix.json).",
        timing,
        "",
        "",
    ])


def run_results(work: Path, configs: Path, out: Path, methods: tuple[str, ...] = METHODS, jobs: int = 1) -> Path:
    """Run (or reuse) every method, `jobs` at a time (`cvit.run.demo.run_methods`), then write `out`/synthetic.md,
    tradeoff.png and matrices.png; returns the markdown's path."""
    started = time.perf_counter()
    data, model = prepare_world(work)
    reused = sum((work / "runs" / f"demo-{Path(m).name}" / "matrix.json").is_file() for m in methods)
    runs = list(run_methods(methods, jobs, work, configs, data, model, "single", TINY_SCALE).values())
    compare_runs(runs, out, "synthetic.md", preamble(methods, time.perf_counter() - started, reused))
    return out / "synthetic.md"
