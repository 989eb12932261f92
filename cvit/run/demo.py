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
from cvit.model.tiny import save_tiny_llava
from cvit.reports.compare import compare_runs
from cvit.run.loop import ContinualRun
from cvit.run.pretrain import base_train
from cvit.synthetic.writer import is_current, make_synthetic

METHODS = ("zeroshot", "seqlora", "joint")


def world_paths(work: Path) -> tuple[Path, Path, Path]:
    """(data root, untrained tiny model folder, base-trained model folder) under `work`."""
    return work / "synthetic", work / "tiny-llava", work / "tiny-llava-base"


def base_model_built(work: Path) -> bool:
    """Whether `work` holds the base-trained tiny model (prepare_world then skips data and base training)."""
    return (world_paths(work)[2] / "config.json").is_file()


def prepare_world(work: Path) -> tuple[Path, Path]:
    """(data root, base-trained model folder), each built once and cached under `work`."""
    data, tiny, base = world_paths(work)
    if not is_current(data):  # missing, or written by an earlier version with other sizes
        print(f"writing the synthetic benchmark to {data}")
        make_synthetic(data)
    if not (tiny / "config.json").is_file():
        save_tiny_llava(tiny)
    if not base_model_built(work):
        print(f"base-training the tiny model into {base}")
        base_train(tiny, data, base)
    return data, base


def applicable(cfg, settings: tuple[str, ...]) -> list[str]:
    """The `key=value` settings whose key's parent exists in `cfg` (e.g. `callbacks.smolora.r=8` where the
    config has a `callbacks.smolora`)."""
    return [item for item in settings if OmegaConf.select(cfg, item.split("=", 1)[0].rsplit(".", 1)[0]) is not None]


def run_method(method: str, work: Path, configs: Path, data: Path, model: Path, templates: str = "single",
               settings: tuple[str, ...] = ()) -> Path:
    """Run `method` (configs/method/<method>.yaml, e.g. `seqlora` or `composed/moelora_ema`) on the synthetic stream
    with the `templates` variant (single: work/runs/demo-<file name>; multi: .../demo-<file name>-multi). Each
    `key=value` of `settings` applies where the method's config has the key's parent (e.g. `callbacks.smolora.r=8`
    to the SMoLoRA methods only)."""
    files = [configs / "model" / "tiny_llava.yaml", configs / "benchmark" / "synthetic.yaml",
             configs / "method" / f"{method}.yaml"]
    suffix = "" if templates == "single" else f"-{templates}"
    overrides = [f"benchmark.root={data}", f"model.path={model}", f"run.root={work / 'runs'}",
                 f"run.name=demo-{Path(method).name}{suffix}", f"benchmark.templates={templates}"]
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


def run_methods(methods: tuple[str, ...], jobs: int, work: Path, *args) -> dict[str, Path]:
    """Each method's run directory, running `run_method(method, work, *args)` for each; with `jobs` > 1 in that
    many spawned processes at once, each with an equal share of the CPU threads and its output in
    work/runs/demo-<file name>.log (one line printed as each run ends)."""
    if jobs <= 1:
        return {method: run_method(method, work, *args) for method in methods}
    threads = max(1, torch.get_num_threads() // jobs)
    print(f"running {len(methods)} methods, {jobs} at a time ({threads} thread{'s' * (threads > 1)} each); "
          f"their output: {work / 'runs'}/demo-<method>.log")
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(logged_run, work / "runs" / f"demo-{Path(m).name}.log", threads, m, work, *args): m
                   for m in methods}
        for future in as_completed(futures):
            print(f"  {futures[future]} done: {future.result()}")
    return {method: future.result() for future, method in sorted(futures.items(), key=lambda f: methods.index(f[1]))}


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
