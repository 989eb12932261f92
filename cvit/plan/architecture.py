"""The architecture a plan counts on: a Hugging Face config, instantiated on the meta device (shapes, no weights).

A config whose `model.path` holds a config.json is planned on that; otherwise on `model.architecture`, the name of a
shipped architecture: the published config.json of the model written out as data under
`<configs>/model/arch/<name>.json` (sources in that folder's README.md).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, PretrainedConfig

from cvit.config.validate import MODEL_TYPES
from cvit.errors import ConfigError
from cvit.model.build import model_class

ARCH_FOLDER = Path("model") / "arch"


def shipped_architectures(configs: Path) -> list[str]:
    return sorted(path.stem for path in (configs / ARCH_FOLDER).glob("*.json"))


def model_config(model: DictConfig, configs: Path) -> tuple[PretrainedConfig, Path]:
    """(the Hugging Face config of `model`, the config.json it was read from), for the `model` section of an
    experiment config; ConfigError when there is none or its model_type is not the family's."""
    folder = None if OmegaConf.is_missing(model, "path") else Path(model.path)
    if folder is not None and (folder / "config.json").is_file():
        config, file = AutoConfig.from_pretrained(folder), folder / "config.json"
    elif model.architecture is not None:
        file = configs / ARCH_FOLDER / f"{model.architecture}.json"
        if not file.is_file():
            raise ConfigError(f"key 'model.architecture': no {file}; shipped: "
                              f"{', '.join(shipped_architectures(configs)) or 'none'}")
        config = AutoConfig.from_pretrained(file)
        config.name_or_path = ""  # no model folder, as for a model built from a config (peft looks for none)
    else:
        raise ConfigError("key 'model.architecture': unset, and model.path holds no config.json; name a shipped "
                          f"architecture ({', '.join(shipped_architectures(configs))}) or a local model folder")
    if config.model_type != MODEL_TYPES.get(model.family):
        raise ConfigError(f"key 'model.family': {model.family!r}, but {file} is a {config.model_type!r} model")
    return config, file


def with_depth(config: PretrainedConfig, layers: int) -> PretrainedConfig:
    """A copy of `config` with `layers` decoder layers and a one-layer vision tower, every width as published."""
    shallow = copy.deepcopy(config)
    text = shallow.get_text_config()
    text.num_hidden_layers = layers
    if getattr(text, "layer_types", None):
        text.layer_types = text.layer_types[:layers]
    for key in ("num_hidden_layers", "depth"):  # CLIP's and Qwen2-VL's name for the vision tower's depth
        if hasattr(shallow.vision_config, key):
            setattr(shallow.vision_config, key, 1)
    return shallow


def meta_model(config: PretrainedConfig, family: str) -> torch.nn.Module:
    """The `family` model of `config` with every tensor on the meta device (built in milliseconds, no memory)."""
    with torch.device("meta"):
        return model_class(family)(config)
