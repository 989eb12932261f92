"""What a reader needs to compare a run with a paper's numbers (DESIGN §4c), recorded in matrix.json as `setup`
when the run starts and printed in report.md: library versions, device, world size, global batch, seed, model,
epochs, chat format, scoring rule, precision, quantization and the trained parts."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch
from omegaconf import DictConfig

from cvit.run.world import world_identity

DISTRIBUTION = "cvit-lightning"
LIBRARIES = (DISTRIBUTION, "torch", "lightning", "transformers", "peft", "bitsandbytes", "torchmetrics")


def library_versions() -> dict[str, str]:
    """Installed version of each library in LIBRARIES ("not installed" when absent)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows: base training's figures depend
    on it (floating-point differences between CPU kernels grow over its steps)."""
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def device_name(accelerator: str) -> str:
    """The device a run trains on: the first CUDA device's name, or the CPU's architecture."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()} visible)"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def run_setup(cfg: DictConfig, world_size: int = 1) -> dict[str, Any]:
    """The run's setup record. Global batch = data.batch_size x train.accumulate_grad_batches x world_size."""
    lora, train = cfg.model.lora, cfg.train
    return {
        "versions": library_versions(),
        "python": platform.python_version(),
        "device": device_name(train.accelerator),
        "world_size": world_size,
        "global_batch": cfg.data.batch_size * train.accumulate_grad_batches * world_size,
        "seed": train.seed,
        "precision": train.precision,
        "quantization": cfg.model.quantization,
        "chat_format": cfg.model.chat_format,
        "image_aspect": cfg.model.image_aspect,
        "scoring": cfg.eval.scoring,
        "relaxed": cfg.eval.relaxed,
        "model": {"family": cfg.model.family, "path": cfg.model.path},
        "epochs": train.epochs, "max_steps": train.max_steps,
        "lora": {"r": lora.r, "alpha": lora.alpha, "lr": train.lr, "target_modules": lora.target_modules},
        "projector": {"trained": lora.train_projector,
                      "lr": (train.lr if lora.projector_lr is None else lora.projector_lr) if lora.train_projector
                      else None},
        "templates": cfg.benchmark.templates,
        "world": world_identity(cfg.benchmark.root, cfg.model.path),
        "order": [str(t) for t in cfg.benchmark.order] if not isinstance(cfg.benchmark.order, str)
        else cfg.benchmark.order,
    }


def setup_lines(setup: dict[str, Any]) -> list[str]:
    """report.md's "Setup" section for a `run_setup` record (empty for runs made before it was kept)."""
    if not setup:
        return []
    projector = setup["projector"]
    trained = f"trained at lr {projector['lr']:g}" if projector["trained"] else "frozen"
    versions = ", ".join(f"{name} {version}" for name, version in setup["versions"].items())
    lines = [
        f"- device: {setup['device']}; world size {setup['world_size']}; global batch {setup['global_batch']}",
        f"- model {setup['model']['family']} from {setup['model']['path']}; precision {setup['precision']}, "
        f"quantization {setup['quantization']}; seed {setup['seed']}; epochs {setup['epochs']} per task"
        + (f" (at most {setup['max_steps']} steps)" if setup["max_steps"] > 0 else ""),
        f"- LoRA r {setup['lora']['r']}, alpha {setup['lora']['alpha']}, lr {setup['lora']['lr']:g}; "
        f"multimodal projector {trained}",
        # runs made before the option was kept cropped, as the processor alone does
        f"- chat format {setup['chat_format']}; images {setup.get('image_aspect', 'crop')}; scoring {setup['scoring']}"
        + (" with relaxed matching" if setup["relaxed"] else "")
        + f"; templates {setup['templates']}; order {setup['order']}",
        f"- libraries: {versions}; python {setup['python']}",
    ]
    return ["## Setup", "", *lines, ""]
