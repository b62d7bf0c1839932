"""Frozen configs recorded from ``__init__`` arguments.

A class that mixes in :class:`ConfigMixin` and decorates its ``__init__`` with
:func:`register_to_config` gets a read-only ``.config`` holding every constructor
argument (defaults included).  The config is written to and read from the same
JSON files Diffusers uses (``config.json``, ``scheduler_config.json``), so a
folder saved by either library loads in the other.

``from_config(config, **overrides)`` builds a class from another object's config
and ignores the keys the target class does not take; this is how schedulers are
swapped: ``pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

from kernel.io import atomic_write_text

logger = logging.getLogger(__name__)

#: The Diffusers file-format version our configs declare.  Diffusers reads this
#: key to decide on compatibility shims; we write a version whose format we follow.
DIFFUSERS_FORMAT_VERSION = "0.35.0"

#: Config key listing the arguments that were left at their defaults (never written to disk).
USE_DEFAULTS_KEY = "_use_default_values"


class FrozenConfig(dict):
    """A dict that also answers attribute access and refuses changes."""

    # Which keys kept their constructor defaults; not a key, so equality and files ignore it.
    __slots__ = ("defaults_used",)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def _frozen(self, *args, **kwargs):
        raise TypeError("a config is frozen; build a new object with from_config(config, key=value)")

    __setitem__ = __delitem__ = __setattr__ = _frozen
    pop = popitem = clear = update = setdefault = _frozen

    def __reduce__(self):
        return (FrozenConfig, (dict(self),))


def defaults_used(config: dict) -> set[str]:
    """Keys of ``config`` left at their defaults (ours, or Diffusers' ``_use_default_values`` key)."""
    found = set(getattr(config, "defaults_used", None) or ())
    return found | set(config.get(USE_DEFAULTS_KEY) or ())


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return value.as_posix()
    if hasattr(value, "tolist"):  # numpy arrays and tensors
        return value.tolist()
    return value


def init_keys(cls: type) -> list[str]:
    """The named parameters of ``cls.__init__`` (without self and ``**kwargs``)."""
    sig = inspect.signature(cls.__init__)
    return [
        n
        for n, p in sig.parameters.items()
        if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]


def register_to_config(init):
    """Decorate ``__init__`` so every argument (defaults included) is recorded in ``self.config``."""
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)
        ignore = set(getattr(type(self), "ignore_for_config", ()))
        recorded: dict[str, Any] = {}
        passed = set(bound.arguments) - {"self"}
        for name, param in sig.parameters.items():
            if name == "self" or name in ignore or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            recorded[name] = bound.arguments.get(name, param.default)
        # Like Diffusers, remember which keys kept their defaults: a swap to another class with
        # from_config lets that class use its own defaults for them.
        self.register_to_config(**recorded)
        object.__setattr__(self._internal_dict, "defaults_used", tuple(k for k in recorded if k not in passed))
        init(self, *args, **kwargs)

    wrapper.__signature__ = sig
    return wrapper


class ConfigMixin:
    """Gives a class a frozen ``config`` and the Diffusers config file format.

    Subclasses set ``config_name`` (``"config.json"`` for models,
    ``"scheduler_config.json"`` for schedulers) and decorate ``__init__`` with
    :func:`register_to_config`.
    """

    config_name: str = "config.json"
    ignore_for_config: tuple[str, ...] = ()

    def register_to_config(self, **kwargs: Any) -> None:
        old = getattr(self, "_internal_dict", None) or FrozenConfig()
        current = dict(old)
        current.update(kwargs)
        new = FrozenConfig(current)
        object.__setattr__(new, "defaults_used", tuple(k for k in getattr(old, "defaults_used", ()) if k not in kwargs)
                           if hasattr(old, "defaults_used") else ())
        object.__setattr__(self, "_internal_dict", new)

    @property
    def config(self) -> FrozenConfig:
        return self._internal_dict

    # ------------------------------------------------------------------ building
    @classmethod
    def extract_init_dict(cls, config: dict, **overrides: Any) -> tuple[dict, dict]:
        """Split ``config`` + ``overrides`` into (arguments ``cls`` takes, the rest)."""
        keys = set(init_keys(cls)) - set(cls.ignore_for_config)
        skip = defaults_used(config)
        source = {k: v for k, v in dict(config).items() if not k.startswith("_") and k not in skip}
        init_dict, unused = {}, {}
        for k, v in {**source, **overrides}.items():
            (init_dict if k in keys else unused)[k] = v
        return init_dict, unused

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **overrides: Any):
        """Build ``cls`` from a config (a dict, a ``FrozenConfig`` or an object with ``.config``).

        Keys that ``cls.__init__`` does not take are ignored (reported at debug level),
        which is what lets compatible schedulers be swapped for one another.
        """
        if config is not None and not isinstance(config, dict) and hasattr(config, "config"):
            config = config.config
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise TypeError(
                f"from_config(config=...) takes a dict or a config of another object, got {type(config).__name__}"
            )
        init_dict, unused = cls.extract_init_dict(config, **overrides)
        if unused:
            logger.debug("%s.from_config ignored keys it does not take: %s", cls.__name__, sorted(unused))
        obj = cls(**init_dict)
        # Keep the other class's keys so that swapping back restores them, as Diffusers does.
        skip = defaults_used(config)
        hidden = {k: v for k, v in dict(config).items()
                  if k not in init_dict and not k.startswith("_") and k not in skip}
        if hidden and isinstance(obj, ConfigMixin):
            obj.register_to_config(**{k: v for k, v in hidden.items() if k not in obj.config})
        if return_unused_kwargs:
            return obj, {k: v for k, v in overrides.items() if k not in init_dict}
        return obj

    # ------------------------------------------------------------------ files
    def to_json_string(self) -> str:
        data = {k: _jsonable(v) for k, v in self.config.items() if k != USE_DEFAULTS_KEY}
        data["_class_name"] = type(self).__name__
        data["_diffusers_version"] = DIFFUSERS_FORMAT_VERSION
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | os.PathLike, **_: Any) -> Path:
        """Write ``config_name`` into ``save_directory`` (atomically)."""
        path = Path(save_directory)
        if path.is_file():
            raise ValueError(f"save_directory={str(path)!r} is a file; give a folder")
        path.mkdir(parents=True, exist_ok=True)
        target = path / self.config_name
        atomic_write_text(target, self.to_json_string())
        return target

    @classmethod
    def load_config(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        **hub_kwargs: Any,
    ) -> dict:
        """Read the config file of ``cls`` from a folder, a file, or a Hub repository."""
        from kernel.hub import resolve_file

        path = Path(pretrained_model_name_or_path)
        if path.is_file():
            file = path
        else:
            file = resolve_file(pretrained_model_name_or_path, cls.config_name, subfolder=subfolder, **hub_kwargs)
        return read_json(file, what=f"{cls.__name__} config")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, **kwargs: Any):
        """Build from a saved config (schedulers and other config-only objects)."""
        hub_keys = ("cache_dir", "revision", "token", "local_files_only", "force_download")
        hub_kwargs = {k: kwargs.pop(k) for k in hub_keys if k in kwargs}
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs)
        return cls.from_config(config, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


def read_json(file: str | os.PathLike, what: str = "JSON file") -> dict:
    """Read a JSON object, turning a missing or broken file into a clear ``ValueError``."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{what}: no file at {file}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what}: {file} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {file} must hold a JSON object, found {type(data).__name__}")
    return data
