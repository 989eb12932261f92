"""`make demo`: build the embedded default if missing, run methods on it (zero-shot, SeqLoRA and joint by
default; any of configs/method/ by name), print their metrics side by side."""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cvit.config.load import load_config
from cvit.errors import ConfigError
from cvit.reports.compare import compare_runs
from cvit.run.loop import ContinualRun
from cvit.run.world import prepare_world

METHODS = ("zeroshot", "seqlora", "joint")


def applicable(cfg, settings: tuple[str, ...]) -> list[str]:
    """The `key=value` settings whose key's parent exists in `cfg` (e.g. `callbacks.smolora.r=8` where the
    config has a `callbacks.smolora`)."""
    return [item for item in settings if OmegaConf.select(cfg, item.split("=", 1)[0].rsplit(".", 1)[0]) is not None]


def run_name(method: str, templates: str = "single", seed: int = 0) -> str:
    """The run folder's name: demo-<method's file name>, then -<templates> unless single, then -seed<k> unless 0."""
    return f"demo-{Path(method).name}" + ("" if templates == "single" else f"-{templates}") + (
        "" if seed == 0 else f"-seed{seed}")


def run_label(method: str, seed: int) -> str:
    """How `run_methods` keys a run: the method for seed 0, "<method> seed <k>" otherwise."""
    return method if seed == 0 else f"{method} seed {seed}"


def run_method(method: str, work: Path, configs: Path, data: Path, model: Path, templates: str = "single",
               settings: tuple[str, ...] = (), seed: int = 0) -> Path:
    """Run `method` (configs/method/<method>.yaml, e.g. `seqlora` or `composed/moelora_ema`) on the synthetic stream
    with the `templates` variant and `train.seed` = `seed`, in work/runs/<run_name>. Each `key=value` of `settings`
    applies where the method's config has the key's parent (e.g. `callbacks.smolora.r=8` to the SMoLoRA methods
    only)."""
    files = [configs / "model" / "tiny_llava.yaml", configs / "benchmark" / "synthetic.yaml",
             configs / "method" / f"{method}.yaml"]
    overrides = [f"benchmark.root={data}", f"model.path={model}", f"run.root={work / 'runs'}",
                 f"run.name={run_name(method, templates, seed)}", f"benchmark.templates={templates}",
                 f"train.seed={seed}"]
    cfg, _ = load_config(files, overrides)
    cfg, sources = load_config(files, overrides + applicable(cfg, settings))
    run = ContinualRun(cfg, sources)
    return run.run(resume=run.run_dir.exists)  # a finished run returns at once, a stopped one continues


def logged_run(log: Path, threads: int, *args) -> Path:
    """`run_method(*args)` in a worker process with `threads` torch threads, its output (Python's and the
    libraries' alike, by file descriptor) going to `log`."""
    torch.set_num_threads(threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        return run_method(*args)


def run_methods(methods: tuple[str, ...] | list[tuple[str, int]], jobs: int, work: Path, configs: Path, data: Path,
                model: Path, templates: str = "single", settings: tuple[str, ...] = ()) -> dict[str, Path]:
    """Each run's directory by `run_label`, running `run_method` for each of `methods` (names, at seed 0, or
    (name, seed) pairs); with `jobs` > 1 in that many spawned processes at once, each with an equal share of the CPU
    threads and its output in work/runs/<run_name>.log (one line printed as each run ends)."""
    runs = [(run, 0) if isinstance(run, str) else tuple(run) for run in methods]
    if jobs <= 1:
        return {run_label(m, s): run_method(m, work, configs, data, model, templates, settings, s) for m, s in runs}
    threads = max(1, torch.get_num_threads() // jobs)
    print(f"running {len(runs)} runs, {jobs} at a time ({threads} thread{'s' * (threads > 1)} each); "
          f"their output: {work / 'runs'}/<run>.log")
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(logged_run, work / "runs" / f"{run_name(m, templates, s)}.log", threads, m, work,
                               configs, data, model, templates, settings, s): (m, s) for m, s in runs}
        for future in as_completed(futures):
            print(f"  {run_label(*futures[future])} done: {future.result()}")
    ordered = sorted(futures.items(), key=lambda item: runs.index(item[1]))
    return {run_label(*run): future.result() for future, run in ordered}


def run_demo(work: Path, configs: Path, methods: tuple[str, ...] = METHODS, templates: str = "single",
             settings: tuple[str, ...] = (), jobs: int = 1) -> None:
    """Run each of `methods` (names of configs/method/*.yaml) on the embedded default with the `templates` variant
    of every task's instructions, each in its own run directory (see `run_method`; a finished run is reused, a
    stopped one continues; `settings` as in `run_method`), `jobs` at a time (see `run_methods`), then compare."""
    missing = [m for m in methods if not (configs / "method" / f"{m}.yaml").is_file()]
    if missing:
        raise ConfigError(f"no method config {', '.join(missing)} in {configs / 'method'}")
    started = time.perf_counter()
    data, model = prepare_world(work)
    runs = run_methods(methods, jobs, work, configs, data, model, templates, settings)
    names = "-".join(Path(m).name for m in methods)
    out = work / "runs" / f"compare-{names}{'' if templates == 'single' else f'-{templates}'}"
    print(f"\nOn the synthetic stream ({templates}-type instructions):")
    print(compare_runs(list(runs.values()), out))
    for method, path in runs.items():
        print(f"  {method:<9} report: {path / 'report.md'}")
    print(f"  side by side, with plots: {out / 'comparison.md'}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
