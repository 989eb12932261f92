"""Semantic checks of a merged config that the schema's types cannot express (no model loaded)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from cvit.config.load import Sources
from cvit.data.images import IMAGE_ASPECTS
from cvit.errors import ConfigError
from cvit.eval.captions import CAPTION_METRICS
from cvit.eval.mif import MIF_RULES
from cvit.eval.scorers import SCORER_NAMES, SCORINGS
from cvit.model.build import DTYPES, FAMILIES, QUANTIZATIONS
from cvit.model.prompting import CHAT_FORMATS
from cvit.run.optimization import check_optimization

MODES = ("sequential", "joint", "zeroshot")
# model.family -> the `model_type` of a Hugging Face folder of that family (its config.json)
MODEL_TYPES = {"llava": "llava", "qwen2_vl": "qwen2_vl"}


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


def validate_model_options(cfg: DictConfig, sources: Sources) -> None:
    """Chat format and image aspect for the family; a projector learning rate only for a trained projector."""
    model, lora = cfg.model, cfg.model.lora
    choose(model.chat_format, CHAT_FORMATS, "model.chat_format", sources)
    if model.family not in CHAT_FORMATS[model.chat_format]:
        raise ConfigError(f"{sources.of('model.chat_format')}: key 'model.chat_format': {model.chat_format!r} is "
                          f"for the {', '.join(CHAT_FORMATS[model.chat_format])} family, not {model.family!r}")
    choose(model.image_aspect, IMAGE_ASPECTS, "model.image_aspect", sources)
    if model.image_aspect == "pad" and model.family != "llava":
        raise ConfigError(f"{sources.of('model.image_aspect')}: key 'model.image_aspect': 'pad' is LLaVA-1.5's "
                          f"preprocessing; the {model.family!r} family's processor takes images of any shape")
    if lora.projector_lr is not None:
        if not lora.train_projector:
            raise ConfigError(f"{sources.of('model.lora.projector_lr')}: key 'model.lora.projector_lr': set, but the "
                              "projector is frozen (set model.lora.train_projector=true, or drop projector_lr)")
        if lora.projector_lr <= 0:
            raise ConfigError(f"{sources.of('model.lora.projector_lr')}: key 'model.lora.projector_lr': must be > 0")


def check_model_family(cfg: DictConfig, sources: Sources) -> None:
    """model.family against the model folder's config.json `model_type` (read as JSON: no model loads). A folder
    without config.json is left to the loader."""
    config_json = Path(cfg.model.path) / "config.json"
    expected = MODEL_TYPES.get(cfg.model.family)
    if expected is None or not config_json.is_file():
        return
    try:
        model_type = json.loads(config_json.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as err:
        raise ConfigError(f"{config_json}: not a JSON object with 'model_type' ({err})") from None
    if model_type != expected:
        fits = [family for family, kind in MODEL_TYPES.items() if kind == model_type]
        hint = (f"set model.family={fits[0]}" if fits else
                "the kit loads Hugging Face-format folders, e.g. llava-hf/llava-1.5-7b-hf or Qwen/Qwen2-VL-2B-Instruct")
        raise ConfigError(f"{sources.of('model.family')}: key 'model.family': {cfg.model.family!r} expects a model "
                          f"folder of model_type {expected!r}, but {config_json} has model_type {model_type!r} "
                          f"({hint})")


def validate_config(cfg: DictConfig, sources: Sources) -> None:
    choose(cfg.model.family, FAMILIES, "model.family", sources)
    choose(cfg.model.quantization, QUANTIZATIONS, "model.quantization", sources)
    choose(cfg.model.compute_dtype, DTYPES, "model.compute_dtype", sources)
    choose(cfg.method.mode, MODES, "method.mode", sources)
    choose(cfg.eval.scoring, SCORINGS, "eval.scoring", sources)
    if not Path(cfg.model.path).is_dir():
        raise ConfigError(f"{sources.of('model.path')}: key 'model.path': model folder not found: {cfg.model.path}")
    check_model_family(cfg, sources)  # first: the family decides which model options apply
    validate_model_options(cfg, sources)
    validate_benchmark(cfg, sources)
    root = Path(cfg.benchmark.root)
    if not root.is_dir():
        raise ConfigError(f"{sources.of('benchmark.root')}: key 'benchmark.root': data root not found: {root}")
    for key in ("data.batch_size", "data.eval_batch_size", "train.epochs", "train.accumulate_grad_batches"):
        section, field = key.split(".")
        if cfg[section][field] < 1:
            raise ConfigError(f"{sources.of(key)}: key '{key}': must be >= 1")
    if cfg.train.lr <= 0:
        raise ConfigError(f"{sources.of('train.lr')}: key 'train.lr': must be > 0")
    check_optimization(cfg, sources)
