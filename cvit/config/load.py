"""Load, merge and validate experiment configs.

Files merge in order with OmegaConf (mappings merge, lists are replaced), then `key=value`
overrides. A file may list other files to merge before itself with a top-level
`include: [relative/path.yaml, ...]` (paths relative to that file). Every key is checked against
`cvit.config.schema.ExperimentConfig`; errors name the key and the file that set it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cvit.config.schema import ExperimentConfig
from cvit.errors import ConfigError

COMMAND_LINE = "the command line"


class Sources:
    """Which file (or the command line) last set each dotted key, for error messages."""

    def __init__(self) -> None:
        self._by_key: dict[str, str] = {}

    def record(self, cfg: DictConfig, origin: str) -> None:
        for key in leaf_keys(OmegaConf.to_container(cfg, resolve=False)):
            self._by_key[key] = origin

    def of(self, key: str) -> str:
        """The origin of `key` or of its closest parent that was set; 'defaults' if none."""
        parts = key.split(".")
        for end in range(len(parts), 0, -1):
            prefix = ".".join(parts[:end])
            if prefix in self._by_key:
                return self._by_key[prefix]
            for known, origin in self._by_key.items():
                if known.startswith(prefix + "."):
                    return origin
        return "defaults"


def leaf_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted keys of every leaf of a plain (container) mapping; an empty mapping counts as a leaf."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaf_keys(value, f"{prefix}.{key}" if prefix else str(key))
    elif prefix:
        yield prefix


def load_yaml(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[DictConfig, str]]:
    """Parse one file (after the files it includes) into (config, origin) pairs, in merge order."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: include cycle: {' -> '.join(str(p) for p in chain + (path,))}")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    includes = raw.pop("include", []) or []
    if not isinstance(includes, list):
        raise ConfigError(f"{path}: key 'include' must be a list of file paths")
    parts: list[tuple[DictConfig, str]] = []
    for included in includes:
        parts += load_yaml(path.parent / str(included), chain + (path,))
    parts.append((OmegaConf.create(raw), str(path)))
    return parts


def merge_one(base: DictConfig, part: DictConfig, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, part)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{origin}: key '{key}': {reason}") from None


def load_config(
    files: Sequence[str | Path], overrides: Sequence[str] = (), sections: Sequence[str] | None = None
) -> tuple[DictConfig, Sources]:
    """Merge `files` then `overrides` onto the schema. Returns the typed config and key origins.
    `data.root`, when set, replaces `benchmark.root`. Required keys must be set in every section, or only
    in `sections` (e.g. ("benchmark",) for the data tools, which load no model)."""
    cfg = OmegaConf.structured(ExperimentConfig)
    sources = Sources()
    parts = [part for file in files for part in load_yaml(Path(file))]
    cfg = merge_parts(cfg, sources, parts + override_parts(overrides))
    if cfg.data.root is not None:
        cfg.benchmark.root = cfg.data.root
        sources.record(OmegaConf.create({"benchmark": {"root": cfg.data.root}}), sources.of("data.root"))
    check_missing(cfg if sections is None else OmegaConf.masked_copy(cfg, list(sections)))
    return cfg, sources


def override_parts(overrides: Sequence[str]) -> list[tuple[DictConfig, str]]:
    """The command line's `key=value` overrides as one (config, origin) part ([] without any)."""
    if not overrides:
        return []
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"{COMMAND_LINE}: override {bad[0]!r} is not of the form key=value")
    try:
        return [(OmegaConf.from_dotlist(list(overrides)), COMMAND_LINE)]
    except OmegaConfBaseException as err:
        raise ConfigError(f"{COMMAND_LINE}: {str(err).splitlines()[0]}") from None


def merge_parts(cfg: DictConfig, sources: Sources, parts: list[tuple[DictConfig, str]]) -> DictConfig:
    """`cfg` with the (config, origin) `parts` merged in order, each key's origin recorded in `sources`, and the
    callbacks set to null dropped."""
    for part, origin in parts:
        cfg = merge_one(cfg, part, origin)
        sources.record(part, origin)
    drop_null_callbacks(cfg)
    return cfg


def drop_null_callbacks(cfg: DictConfig) -> None:
    """`callbacks.<key>=null` removes a callback composed by an earlier file."""
    for key in [k for k, v in cfg.callbacks.items() if v is None]:
        del cfg.callbacks[key]


def check_missing(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"missing required key(s): {', '.join(missing)} (set them in a config file or as key=value)"
        )


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML (what a run directory records)."""
    return OmegaConf.to_yaml(cfg, resolve=True)
