"""Semantic checks of a merged config that the schema's types cannot express (no model loaded)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from cvit.config import Sources
from cvit.errors import ConfigError
from cvit.eval.captions import CAPTION_METRICS
from cvit.eval.mif import MIF_RULES
from cvit.eval.scorers import SCORER_NAMES
from cvit.model.build import DTYPES, FAMILIES, QUANTIZATIONS

MODES = ("sequential", "joint", "zeroshot")


def choose(cfg_value: str, allowed, key: str, sources: Sources) -> None:
    if cfg_value not in allowed:
        raise ConfigError(
            f"{sources.of(key)}: key '{key}': {cfg_value!r} is not one of {', '.join(map(str, allowed))}"
        )


def validate_benchmark(cfg: DictConfig, sources: Sources) -> None:
    """The benchmark spec alone (what the data tools need)."""
    bench = cfg.benchmark
    choose(bench.protocol.caption_metric, CAPTION_METRICS, "benchmark.protocol.caption_metric", sources)
    choose(bench.protocol.bwt_denominator, ("T-1", "T"), "benchmark.protocol.bwt_denominator", sources)
    for name, task in bench.tasks.items():
        choose(task.scorer, SCORER_NAMES, f"benchmark.tasks.{name}.scorer", sources)
        if task.mif is not None:
            choose(task.mif, MIF_RULES, f"benchmark.tasks.{name}.mif", sources)
        if task.max_new_tokens < 1:
            raise ConfigError(f"{sources.of(f'benchmark.tasks.{name}')}: key 'benchmark.tasks.{name}."
                              "max_new_tokens': must be >= 1")
    if not bench.tasks:
        raise ConfigError(f"{sources.of('benchmark')}: key 'benchmark.tasks': no tasks defined")


def validate_config(cfg: DictConfig, sources: Sources) -> None:
    choose(cfg.model.family, FAMILIES, "model.family", sources)
    choose(cfg.model.quantization, QUANTIZATIONS, "model.quantization", sources)
    choose(cfg.model.compute_dtype, DTYPES, "model.compute_dtype", sources)
    choose(cfg.method.mode, MODES, "method.mode", sources)
    validate_benchmark(cfg, sources)
    if not Path(cfg.model.path).is_dir():
        raise ConfigError(f"{sources.of('model.path')}: key 'model.path': model folder not found: {cfg.model.path}")
    root = Path(cfg.benchmark.root)
    if not root.is_dir():
        raise ConfigError(f"{sources.of('benchmark.root')}: key 'benchmark.root': data root not found: {root}")
    for key in ("data.batch_size", "data.eval_batch_size", "train.epochs", "train.accumulate_grad_batches"):
        section, field = key.split(".")
        if cfg[section][field] < 1:
            raise ConfigError(f"{sources.of(key)}: key '{key}': must be >= 1")
    if cfg.train.lr <= 0:
        raise ConfigError(f"{sources.of('train.lr')}: key 'train.lr': must be > 0")
