"""`make results`: every method and baseline on the embedded default, side by side in results/synthetic.md with its
two plots. SeqLoRA, joint and the four papers' methods run under several seeds (0, 1 and 2 by default) and show mean ±
standard deviation; the others run at seed 0. `make composed`: the composed methods beside the methods they are made
of, at seed 0, in results/composed/. The runs are the demo's (work/runs/demo-<method>[-seed<k>]; a finished one is
reused), so `make demo`'s figures are rows of these tables."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cvit.errors import ConfigError
from cvit.reports.compare import compare_runs
from cvit.run.demo import run_label, run_methods, run_name
from cvit.run.document import read_run_document
from cvit.run.provenance import cpu_model, library_versions
from cvit.run.world import STREAM_SIZES, base_is_current, prepare_world
from cvit.synthetic.version import WORLD_VERSION
from cvit.synthetic.writer import SyntheticSizes, is_current

# the baselines, then each paper's method (its main variant)
METHODS = ("zeroshot", "seqlora", "joint", "replay", "ewc", "lwf", "moelora", "olora", "llaca", "proglora_static",
           "proglora_dynamic", "hide", "smolora")
# each composed method (configs/method/composed/) after the methods it is made of, and SeqLoRA for reference
COMPOSED = ("seqlora", "proglora_dynamic", "llaca", "composed/proglora_ema", "smolora", "replay",
            "composed/smolora_replay", "moelora", "composed/moelora_ema")
# SeqLoRA, joint and the four papers' methods: run under every seed of `run_results`
SEEDED = ("seqlora", "joint", "llaca", "proglora_static", "proglora_dynamic", "hide", "smolora")
SEEDS = (0, 1, 2)
# The mixtures scaled to the tiny model: their eight experts need a total rank of at least 8 (one each), twice
# SeqLoRA's rank 4; alpha keeps the scaling alpha / r at SeqLoRA's 2
TINY_SCALE = ("callbacks.smolora.r=8", "callbacks.smolora.alpha=16", "callbacks.moelora.r=8",
              "callbacks.moelora.alpha=16")


def preamble(methods: tuple[str, ...], seeds: tuple[int, ...], seconds: float, reused: int, built_world: bool,
             stage_seconds: float, command: str = "make results") -> str:
    """The file's header: what was run, on what, and how long this invocation took (`seconds` of wall time;
    `stage_seconds`, the runs' train + evaluation time summed over runs)."""
    sizes = SyntheticSizes()
    world = "writing the benchmark and the base model folder included" if built_world else "the world already built"
    timing = (f"This invocation took {seconds / 60:.1f} min of wall time ({world}"
              + (f"; {reused} finished runs reused" if reused else "")
              + f") on {cpu_model()} ({os.cpu_count()} cores); the runs' stages took {stage_seconds / 60:.1f} min"
              + " summed over runs.")
    versions = ", ".join(f"{name} {version}" for name, version in library_versions().items())
    return "\n".join([
        "# Every method on the synthetic stream" if command == "make results" else "# The composed methods",
        "",
        f"Written by `{command}` (`cvit results`); do not edit by hand. The embedded world {WORLD_VERSION} (its",
        "base model committed in cvit/synthetic/base/, the same on every machine: `make world-check`), official",
        "scoring,",
        f"single-type instructions, the default order; {sizes.train} training and {sizes.test} test records per task;",
        "the tiny LLaVA of configs/model/tiny_llava.yaml with its multimodal projector trained. Mixtures scaled to the",
        f"tiny model: {' '.join(TINY_SCALE)}. Each row is configs/method/<name>.yaml",
        f"({', '.join(methods)}); its run is work/runs/demo-<name> (report.md, matrix.json). Seed {seeds[0]}"
        + (";" if len(seeds) > 1 else "."),
        *([f"the rows with seeds ({', '.join(m for m in SEEDED if m in methods)}) are the mean ± sample standard "
           f"deviation over seeds {', '.join(map(str, seeds))} (runs demo-<name>-seed<k>): the seed changes the "
           "adapters' initialisation, the order of the training records and their drawn templates; the world stays "
           "as it is."] if len(seeds) > 1 else []),
        timing,
        f"Libraries: {versions} (the versions of requirements.lock).",
        "",
        "",
    ])


def check_seeds(seeds: tuple[int, ...]) -> tuple[int, ...]:
    """`seeds` if they are distinct integers, at least one; ConfigError saying what is wrong otherwise."""
    if not seeds:
        raise ConfigError("cvit results: the seed list is empty; give one or more integers, e.g. --seeds 0 1 2")
    if not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds):
        raise ConfigError(f"cvit results: seeds must be integers, got {list(seeds)}")
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"cvit results: a seed is given twice: {list(seeds)}")
    return seeds


def run_results(work: Path, configs: Path, out: Path, methods: tuple[str, ...] = METHODS, jobs: int = 1,
                seeds: tuple[int, ...] = SEEDS, composed: bool = False) -> Path:
    """Run (or reuse) every method at the first of `seeds` and the SEEDED ones at every seed, `jobs` at a time
    (`cvit.run.demo.run_methods`), then write `out`/synthetic.md, tradeoff.png and matrices.png; returns the
    markdown's path. `composed`: the COMPOSED methods at the first seed instead, into `out`/composed/."""
    if composed:
        methods, seeds, out = COMPOSED, seeds[:1], out / "composed"
    check_seeds(seeds)
    started = time.perf_counter()
    built_world = not (is_current(work / "synthetic", STREAM_SIZES) and base_is_current(work / "tiny-llava-base"))
    data, model = prepare_world(work)
    # the seeded runs first: their methods are the longest (ProgLoRA's pool and recall, HiDe, SMoLoRA), and a pool
    # that ends on short runs leaves no process idle for long
    jobs_list = ([(m, s) for m in methods if m in SEEDED for s in seeds]
                 + [(m, seeds[0]) for m in methods if m not in SEEDED])
    reused = sum((work / "runs" / run_name(m, "single", s) / "matrix.json").is_file() for m, s in jobs_list)
    runs = run_methods(jobs_list, jobs, work, configs, data, model, "single", TINY_SCALE)
    groups = [[runs[run_label(m, s)] for s in (seeds if m in SEEDED else seeds[:1])] for m in methods]
    stage_seconds = sum(sum(read_run_document(run / "matrix.json").seconds) for run in runs.values())
    document = "composed.md" if composed else "synthetic.md"
    header = preamble(methods, seeds, time.perf_counter() - started, reused, built_world, stage_seconds,
                      "make composed" if composed else "make results")
    compare_runs([group[0] if len(group) == 1 else group for group in groups], out, document, header)
    return out / document
