"""The front door: :func:`load` and :func:`sampler`."""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any

from kernel.registry import ComponentNotFoundError, get_registry


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the family it was asked to load as."""


def _pipeline_base():
    from kernel.pipeline import DiffusionPipeline

    return DiffusionPipeline


def check_fits(family: str, family_cls: type, index: dict) -> None:
    """Raise :class:`CheckpointMismatchError` when ``index`` cannot be loaded as ``family``.

    When the folder's pipeline class is installed, both classes' ``pipeline_family`` must agree (an
    SD 1.5 folder is not an SDXL one, whatever components it has); otherwise the family's required
    components must be present.
    """
    source_class = index.get("_class_name", "?")
    registry = get_registry()
    if isinstance(source_class, str) and registry.has(source_class):
        try:
            source_cls = registry.resolve(source_class)
        except Exception:  # noqa: BLE001 - a broken plugin: fall back to the component check
            source_cls = None
        theirs, ours = getattr(source_cls, "pipeline_family", None), getattr(family_cls, "pipeline_family", None)
        if theirs is not None and ours is not None and theirs != ours:
            raise CheckpointMismatchError(
                f"the folder holds a {source_class} ({theirs} family), which {family!r} ({family_cls.__name__}, "
                f"{ours} family) cannot run; load it with kernel.load(folder) to get its own pipeline")
    components = {k for k, v in index.items() if isinstance(v, (list, tuple)) and not k.startswith("_")}
    required = {
        n
        for n, p in inspect.signature(family_cls.__init__).parameters.items()
        if n != "self" and p.default is inspect.Parameter.empty and n not in getattr(family_cls, "_optional_components", [])
        and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    missing = sorted(required - components)
    if missing:
        raise CheckpointMismatchError(
            f"the checkpoint is a {source_class}, which does not fit family {family!r} "
            f"({family_cls.__name__}): it lacks {', '.join(missing)}"
        )
    reasons = [r for r in registry.hook.kernel_check_fits(family=family, model_index=index) if r]
    if reasons:
        raise CheckpointMismatchError(f"the checkpoint does not fit family {family!r}: {'; '.join(reasons)}")


def load(family_or_source: str | os.PathLike, source: str | os.PathLike | None = None, **kwargs: Any):
    """``load(source)`` detects the pipeline (folder, repo or single file); ``load(family, source)`` checks it fits."""
    Pipeline = _pipeline_base()
    registry = get_registry()
    if source is None:
        single = Path(family_or_source).is_file()  # one checkpoint file in an original layout
        return (Pipeline.from_single_file if single else Pipeline.from_pretrained)(family_or_source, **kwargs)
    family = str(family_or_source)
    try:
        family_cls = registry.resolve(family, "kernel.aliases")
    except ComponentNotFoundError:
        if registry.has(family):  # a pipeline class name works as a family too
            family_cls = registry.resolve(family)
        else:
            raise
    if Path(source).is_file():  # from_single_file checks that the file fits the class
        return family_cls.from_single_file(source, **kwargs)
    hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
    check_fits(family, family_cls, Pipeline.load_model_index(source, **hub))
    return family_cls.from_pretrained(source, **kwargs)


def sampler_names() -> list[str]:
    catalogue = get_registry().samplers()
    names = []
    for name in catalogue:
        display = getattr(catalogue[name], "display_name", None)
        names.append(display or name)
    return sorted(names, key=str.lower)


def sampler(name: str, config: Any = None) -> Any:
    """A scheduler configured as the named A1111 sampler, or a scheduler class name built from ``config``."""
    if not isinstance(name, str):
        raise TypeError(f"sampler name must be a string, got {type(name).__name__}")
    if config is not None and not isinstance(config, dict) and hasattr(config, "config"):
        config = config.config
    registry = get_registry()
    catalogue = registry.samplers()
    factory = catalogue.get(name.strip().lower())
    if factory is not None:
        return factory(dict(config) if config is not None else None)
    if registry.has(name):
        cls = registry.resolve(name)
        if hasattr(cls, "set_timesteps"):
            return cls.from_config(dict(config) if config is not None else {})
    known = sampler_names()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5) or difflib.get_close_matches(
        name.lower(), [k.lower() for k in known], n=3, cutoff=0.5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise ValueError(f"unknown sampler {name!r}; `kernel samplers` lists the {len(known)} installed ones.{hint}")
