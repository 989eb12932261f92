"""Build callbacks from the config's named mapping.

Each entry is `{name: <registered name>, ...arguments}` or, for a user's own callback,
`{class_path: "package.module:ClassName", ...arguments}` (imported, never evaluated; see
`import_user_module` for where from). Arguments are
checked against the constructor's signature, so a typo is an error naming the key and its file.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cvit.config.load import Sources
from cvit.errors import ConfigError

CALLBACKS: dict[str, type] = {}
# what each Shared member means, for the error naming two owners of it
OWNED = {"adapter_pool": "which adapters exist, which train and which run at inference",
         "router": "how inputs are routed to the adapters", "adapter_layer": "the LoRA layer type of every adapter"}


def register_callback(name: str) -> Callable[[type], type]:
    """Class decorator: make a callback buildable as `{name: <name>}` in YAML."""

    def decorate(cls: type) -> type:
        if name in CALLBACKS:
            raise ValueError(f"callback name {name!r} is registered twice")
        CALLBACKS[name] = cls
        return cls

    return decorate


def known_callbacks() -> dict[str, type]:
    import cvit.callbacks  # noqa: F401  (importing the package registers the built-in callbacks)

    return CALLBACKS


def with_argument_defaults(callbacks: dict[str, Any]) -> dict[str, Any]:
    """A config's `callbacks` mapping with every built-in callback's omitted arguments at their defaults (a run
    stored before an argument existed ran as its default says); user callbacks (`class_path`) as they are."""
    known = known_callbacks()
    filled = {}
    for key, spec in callbacks.items():
        cls = known.get(spec.get("name")) if isinstance(spec, dict) else None
        if cls is None:
            filled[key] = spec
            continue
        defaults = {name: param.default for name, param in inspect.signature(cls.__init__).parameters.items()
                    if param.default is not inspect.Parameter.empty}
        filled[key] = {**defaults, **spec}
    return filled


def import_user_module(name: str, origin: str):
    """Import a user's module from sys.path, else from the current folder, else from the folder of the YAML file
    `origin` that names it (so `cvit fit` finds a project's own package without PYTHONPATH)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name.split(".")[0]:
            raise  # the module was found; something it imports is missing
    folders = [str(Path.cwd()), *([str(Path(origin).resolve().parent)] if Path(origin).is_file() else [])]
    sys.path.extend(folder for folder in folders if folder not in sys.path)
    return importlib.import_module(name)


def resolve_class(key: str, spec: dict[str, Any], origin: str) -> type:
    from cvit.callbacks.base import ContinualCallback

    if ("name" in spec) == ("class_path" in spec):
        raise ConfigError(f"{origin}: key 'callbacks.{key}': give exactly one of 'name' or 'class_path'")
    if "name" in spec:
        registry = known_callbacks()
        if spec["name"] not in registry:
            raise ConfigError(
                f"{origin}: key 'callbacks.{key}.name': unknown callback {spec['name']!r}; "
                f"known: {', '.join(sorted(registry))}"
            )
        return registry[spec["name"]]
    module_name, _, class_name = str(spec["class_path"]).partition(":")
    try:
        cls = getattr(import_user_module(module_name, origin), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{origin}: key 'callbacks.{key}.class_path': cannot import: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, ContinualCallback)):
        raise ConfigError(f"{origin}: key 'callbacks.{key}.class_path': not a ContinualCallback subclass")
    return cls


SIMPLE_TYPES = (bool, int, float, str)


def plain(name: Any) -> str:
    """A Shared / Capability member or a user's string, as its string."""
    return str(getattr(name, "value", name))


def check_argument_types(cls: type, key: str, kwargs: dict[str, Any], sources: Sources) -> None:
    """Arguments annotated bool / int / float / str must have that type (an int passes as a float)."""
    hints = typing.get_type_hints(cls.__init__)
    for arg, value in kwargs.items():
        expected = hints.get(arg)
        if expected not in SIMPLE_TYPES:
            continue
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        ok = ok or (expected is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise ConfigError(
                f"{sources.of(f'callbacks.{key}.{arg}')}: key 'callbacks.{key}.{arg}': "
                f"expected {expected.__name__}, got {value!r}"
            )


def blamed_key(key: str, kwargs: dict[str, Any], message: str) -> str:
    """The dotted key a constructor's error is about: the first argument the message names (so a bad value
    given on the command line is blamed on the command line), else the callback's own entry."""
    found = {arg: hit.start() for arg in kwargs if (hit := re.search(rf"\b{re.escape(arg)}\b", message))}
    return f"callbacks.{key}.{min(found, key=found.get)}" if found else f"callbacks.{key}"


def build_callbacks(specs: DictConfig, sources: Sources, mode: str = "sequential") -> dict[str, Any]:
    """Instantiate every callback (cheap: no model is touched). Raises ConfigError on bad entries, on two
    owners of one thing and on a `sequential_only` callback in a joint or zero-shot run (`mode`)."""
    from cvit.callbacks.base import Shared

    shared = [thing.value for thing in Shared]
    built: dict[str, Any] = {}
    owners: dict[str, str] = {}
    provided: set[str] = set()
    readers: list[str] = []  # callbacks so far that read the trained weights at task end
    for key, node in specs.items():
        origin = sources.of(f"callbacks.{key}")
        spec = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        if not isinstance(spec, dict):
            raise ConfigError(f"{origin}: key 'callbacks.{key}': expected a mapping, got {spec!r}")
        cls = resolve_class(key, spec, origin)
        kwargs = {k: v for k, v in spec.items() if k not in ("name", "class_path")}
        params = inspect.signature(cls.__init__).parameters
        for arg in kwargs:
            if arg not in params or arg == "self":
                allowed = [p for p in params if p != "self"]
                raise ConfigError(
                    f"{sources.of(f'callbacks.{key}.{arg}')}: key 'callbacks.{key}.{arg}': "
                    f"unknown argument of {cls.__name__}; allowed: {', '.join(allowed) or 'none'}"
                )
        check_argument_types(cls, key, kwargs, sources)
        try:
            callback = cls(**kwargs)
        except (TypeError, ValueError) as err:
            where = blamed_key(key, kwargs, str(err))
            raise ConfigError(f"{sources.of(where)}: key '{where}': {err}") from None
        if cls.sequential_only and mode != "sequential":
            raise ConfigError(f"{origin}: key 'callbacks.{key}': {cls.__name__} needs a sequential stream "
                              f"(method.mode is {mode!r}): set method.mode=sequential or remove callbacks.{key}")
        for thing in map(plain, cls.owns):
            if thing not in shared:
                raise ConfigError(f"{origin}: key 'callbacks.{key}': {cls.__name__}.owns names {thing!r}; shared "
                                  f"things are {', '.join(shared)} (cvit.callbacks.base.Shared)")
            if thing in owners:
                raise ConfigError(
                    f"{origin}: callbacks '{owners[thing]}' and '{key}' both take charge of {thing!r} "
                    f"({OWNED[thing]}); a run has one owner of it: remove one of the two"
                )
            owners[thing] = key
        missing = [need for need in map(plain, callback.requires()) if need not in provided]
        if missing:
            raise ConfigError(f"{origin}: key 'callbacks.{key}': needs {', '.join(missing)} from a callback "
                              "listed before it: add one that provides it (progressive_pool provides allocation "
                              "and dynamic_allocation) above this entry, or move that entry above this one")
        provided.update(map(plain, callback.provides()))
        role = cls.task_end_weights
        if role == "writes" and readers:
            raise ConfigError(
                f"{origin}: key 'callbacks.{key}': it replaces the trained weights at task end, after "
                f"'{readers[0]}' has consolidated them (e.g. fusion before EMA); list '{key}' before '{readers[0]}'"
            )
        if role == "reads":
            readers.append(str(key))
        callback.config_key = str(key)
        built[str(key)] = callback
    return built
