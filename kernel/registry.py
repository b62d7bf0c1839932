"""Plugin discovery and name resolution.

Plugins are ordinary distributions that declare entry points:

``kernel.components``
    ``DiffusersClassName = "package.module:Attribute"``: models, schedulers, pipelines and
    other components, under the class name a Diffusers ``model_index.json`` or config uses.
``kernel.aliases``
    ``family = "package.module:PipelineClass"``: short family names for :func:`kernel.load`
    (``sd``, ``sdxl``, ``flux`` ...).
``kernel.samplers``
    ``catalogue = "package.module:CATALOGUE"``: a mapping of sampler names (A1111 style) to
    factories ``factory(config: dict | None) -> scheduler``.
``kernel.hooks``
    ``name = "package.module"``: a module with ``pluggy`` hook implementations (see
    :mod:`kernel.hookspecs`), imported only when a hook is called.
``kernel.models`` / ``kernel.datasets``
    ``name = "package.module:function"``: a function returning the folder of a model (or a
    dataset) the plugin ships; ``kernel generate`` uses the first model as its default.

Rules (see ``docs/plugins.md``):

* discovery reads package metadata only; a plugin module is imported the first time one of
  its names is resolved, so ``import kernel`` and ``kernel plugins`` import no plugin code;
* a plugin that fails to import, or declares a malformed entry point, is reported once with a
  warning naming the plugin, its version and the error; everything else keeps working;
* when two distributions provide the same name, a warning names both and the provider whose
  distribution name sorts first wins (so resolution does not depend on install order);
* ``KERNEL_PLUGINS`` (comma-separated distribution names; empty for none) restricts which
  plugins are seen.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import re
import threading
import warnings
from importlib import metadata
from typing import Any, Callable

GROUPS = ("kernel.components", "kernel.aliases", "kernel.samplers", "kernel.hooks", "kernel.models",
          "kernel.datasets")
_REF = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?$")


class PluginWarning(UserWarning):
    """A plugin could not be loaded, or two plugins claim the same name."""


class ComponentNotFoundError(LookupError, ValueError):
    """No installed plugin provides the requested name."""


class PluginLoadError(ImportError):
    """The plugin that provides a name failed to import."""


@dataclasses.dataclass
class Entry:
    name: str
    group: str
    value: str
    dist: str
    version: str


@dataclasses.dataclass
class PluginInfo:
    name: str
    version: str
    provides: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    errors: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _known_package(name: str) -> str | None:
    from kernel._known import KNOWN_PROVIDERS

    return KNOWN_PROVIDERS.get(name)


def allowed_plugins() -> set[str] | None:
    """The distributions ``KERNEL_PLUGINS`` allows, or ``None`` for all."""
    raw = os.environ.get("KERNEL_PLUGINS")
    if raw is None:
        return None
    return {_norm(p) for p in raw.split(",") if p.strip()}


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist.strip()).lower()


class Registry:
    """The set of names the installed (and allowed) plugins provide."""

    def __init__(self, entries: list[Entry] | None = None, allowed: set[str] | None | str = "env") -> None:
        self._lock = threading.RLock()
        self._allowed = allowed_plugins() if allowed == "env" else allowed
        self.plugins: dict[str, PluginInfo] = {}
        self._table: dict[str, dict[str, Entry]] = {g: {} for g in GROUPS}
        self._loaded: dict[tuple[str, str], Any] = {}
        self._failed: dict[str, str] = {}
        self._pm = None
        self._build(entries if entries is not None else self._scan())

    # ---------------------------------------------------------------- discovery
    def _scan(self) -> list[Entry]:
        found = []
        for dist in metadata.distributions():
            try:
                eps = dist.entry_points
            except Exception:  # pragma: no cover - broken metadata
                continue
            for ep in eps:
                if ep.group in GROUPS:
                    found.append(Entry(ep.name, ep.group, ep.value, dist.metadata["Name"], dist.version))
        return found

    def _build(self, entries: list[Entry]) -> None:
        seen_dists: set[tuple[str, str]] = set()
        for e in sorted(entries, key=lambda e: (_norm(e.dist), e.group, e.name)):
            if self._allowed is not None and _norm(e.dist) not in self._allowed:
                continue
            if (_norm(e.dist), e.group + e.name) in seen_dists:
                continue  # the same distribution seen twice on sys.path
            seen_dists.add((_norm(e.dist), e.group + e.name))
            info = self.plugins.setdefault(e.dist, PluginInfo(e.dist, e.version))
            if not _REF.match(e.value.strip()):
                msg = f"entry point {e.group}:{e.name} = {e.value!r} is not 'module:attribute'"
                info.errors.append(msg)
                self._warn(e.dist, e.version, msg)
                continue
            info.provides.setdefault(e.group, []).append(e.name)
            table = self._table[e.group]
            key = e.name.lower() if e.group in ("kernel.aliases",) else e.name
            if key in table and table[key].dist != e.dist:
                first = table[key]
                warnings.warn(
                    f"{e.name!r} ({e.group}) is provided by both {first.dist} {first.version} "
                    f"and {e.dist} {e.version}; using {first.dist} (first by distribution name)",
                    PluginWarning,
                    stacklevel=3,
                )
                continue
            table[key] = e

    def _warn(self, dist: str, version: str, message: str) -> None:
        from kernel import __version__

        warnings.warn(
            f"plugin {dist} {version} could not be loaded (kernel {__version__}): {message}",
            PluginWarning,
            stacklevel=4,
        )

    # ---------------------------------------------------------------- queries
    def names(self, group: str = "kernel.components") -> list[str]:
        return sorted(self._table[group])

    def has(self, name: str, group: str = "kernel.components") -> bool:
        return name in self._table[group]

    def entry(self, name: str, group: str = "kernel.components") -> Entry:
        key = name.lower() if group == "kernel.aliases" else name
        table = self._table[group]
        if key not in table:
            raise self._not_found(name, group)
        return table[key]

    def _not_found(self, name: str, group: str) -> ComponentNotFoundError:
        what = {"kernel.aliases": "family", "kernel.components": "component"}.get(group, "name")
        parts = [f"no installed plugin provides the {what} {name!r}."]
        package = _known_package(name)
        if package:
            parts.append(f"Install it with: pip install {package}")
        close = difflib.get_close_matches(name, list(self._table[group]), n=3, cutoff=0.6)
        if close:
            parts.append("Close matches: " + ", ".join(close))
        if self._allowed is not None:
            parts.append(f"(KERNEL_PLUGINS restricts plugins to: {', '.join(sorted(self._allowed)) or 'none'})")
        return ComponentNotFoundError(" ".join(parts))

    def resolve(self, name: str, group: str = "kernel.components") -> Any:
        """Import and return the object registered under ``name`` (cached)."""
        entry = self.entry(name, group)
        key = (group, entry.name)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            if entry.dist in self._failed:
                raise PluginLoadError(f"{name!r} comes from plugin {entry.dist}, which failed to load: {self._failed[entry.dist]}")
            try:
                obj = _load_reference(entry.value)
            except Exception as err:  # noqa: BLE001 - any failure in plugin code is isolated
                msg = f"{type(err).__name__}: {err}"
                self._failed[entry.dist] = msg
                info = self.plugins.get(entry.dist)
                if info is not None:
                    info.errors.append(msg)
                self._warn(entry.dist, entry.version, msg)
                raise PluginLoadError(
                    f"{name!r} comes from plugin {entry.dist} {entry.version}, which failed to load: {msg}"
                ) from err
            self._loaded[key] = obj
            return obj

    def check_all(self) -> None:
        """Import every registered name, recording load errors (used by ``kernel plugins --check``)."""
        for group in GROUPS:
            for entry in list(self._table[group].values()):
                try:
                    if group == "kernel.hooks":
                        importlib.import_module(entry.value.split(":")[0])
                    else:
                        self.resolve(entry.name, group)
                except Exception:  # noqa: BLE001 - recorded in plugin info
                    continue

    # ---------------------------------------------------------------- samplers
    def samplers(self) -> dict[str, Callable]:
        """Every sampler name from every ``kernel.samplers`` catalogue, keyed by lower-case name."""
        merged: dict[str, Callable] = {}
        for name in self.names("kernel.samplers"):
            try:
                catalogue = self.resolve(name, "kernel.samplers")
            except PluginLoadError:
                continue
            for sampler_name, factory in catalogue.items():
                merged.setdefault(sampler_name.lower(), factory)
        return merged

    # ---------------------------------------------------------------- hooks
    @property
    def hook(self):
        """The pluggy hook relay; hook modules are imported on first access."""
        with self._lock:
            if self._pm is None:
                import pluggy

                from kernel import hookspecs

                pm = pluggy.PluginManager("kernel")
                pm.add_hookspecs(hookspecs)
                for entry in self._table["kernel.hooks"].values():
                    try:
                        module = _load_reference(entry.value)
                        pm.register(module, name=f"{entry.dist}:{entry.name}")
                    except Exception as err:  # noqa: BLE001
                        msg = f"{type(err).__name__}: {err}"
                        self.plugins[entry.dist].errors.append(msg)
                        self._warn(entry.dist, entry.version, msg)
                self._pm = pm
            return self._pm.hook


def _load_reference(value: str) -> Any:
    module_name, _, attr = value.strip().partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


_registry: Registry | None = None
_registry_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry (built on first use)."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = Registry()
        return _registry


def reset_registry(registry: Registry | None = None) -> None:
    """Drop the cached registry (tests, or after installing a plugin at run time)."""
    global _registry
    with _registry_lock:
        _registry = registry
