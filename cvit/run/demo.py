"""`make demo`: build the embedded default if missing, run methods on it (zero-shot, SeqLoRA and joint by
default; any of configs/method/ by name), print their metrics side by side."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import OmegaConf

from cvit.config.load import load_config
from cvit.errors import ConfigError
from cvit.model.tiny import save_tiny_llava
from cvit.reports.compare import compare_runs
from cvit.run.loop import ContinualRun
from cvit.run.pretrain import base_train
from cvit.synthetic.writer import is_current, make_synthetic

METHODS = ("zeroshot", "seqlora", "joint")


def prepare_world(work: Path) -> tuple[Path, Path]:
    """(data root, base-trained model folder), each built once and cached under `work`."""
    data, tiny, base = work / "synthetic", work / "tiny-llava", work / "tiny-llava-base"
    if not is_current(data):  # missing, or written by an earlier version with other sizes
        print(f"writing the synthetic benchmark to {data}")
        make_synthetic(data)
    if not (tiny / "config.json").is_file():
        save_tiny_llava(tiny)
    if not (base / "config.json").is_file():
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


def run_demo(work: Path, configs: Path, methods: tuple[str, ...] = METHODS, templates: str = "single",
             settings: tuple[str, ...] = ()) -> None:
    """Run each of `methods` (names of configs/method/*.yaml) on the embedded default with the `templates` variant
    of every task's instructions, each in its own run directory (see `run_method`; a finished run is reused, a
    stopped one continues; `settings` as in `run_method`), then compare."""
    missing = [m for m in methods if not (configs / "method" / f"{m}.yaml").is_file()]
    if missing:
        raise ConfigError(f"no method config {', '.join(missing)} in {configs / 'method'}")
    started = time.perf_counter()
    data, model = prepare_world(work)
    runs = {method: run_method(method, work, configs, data, model, templates, settings) for method in methods}
    names = "-".join(Path(m).name for m in methods)
    out = work / "runs" / f"compare-{names}{'' if templates == 'single' else f'-{templates}'}"
    print(f"\nOn the synthetic stream ({templates}-type instructions):")
    print(compare_runs(list(runs.values()), out))
    for method, path in runs.items():
        print(f"  {method:<9} report: {path / 'report.md'}")
    print(f"  side by side, with plots: {out / 'comparison.md'}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
