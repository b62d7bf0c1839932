"""kernel: a diffusion micro-kernel.

``import kernel`` is cheap: it imports neither torch nor any plugin.  The public
functions below load what they need on first call.

    import kernel
    pipe = kernel.load("./my-model")                       # detect the pipeline from model_index.json
    pipe = kernel.load("sdxl", "org/name", torch_dtype=torch.float16)
    Euler = kernel.component("EulerDiscreteScheduler")
    sched = kernel.sampler("DPM++ 2M Karras", pipe.scheduler.config)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "component", "load", "sampler", "samplers", "plugins"]


def component(name: str) -> Any:
    """The class registered under ``name`` (a Diffusers class name or a family alias)."""
    from kernel.registry import ComponentNotFoundError, get_registry

    registry = get_registry()
    if registry.has(name):
        return registry.resolve(name)
    try:
        return registry.resolve(name, "kernel.aliases")
    except ComponentNotFoundError:
        raise registry._not_found(name, "kernel.components") from None


def load(family_or_source: str, source: str | None = None, **kwargs: Any) -> Any:
    """Load a pipeline: ``load("./folder")`` or ``load("sdxl", "org/name", torch_dtype=...)``."""
    from kernel.loading import load as _load

    return _load(family_or_source, source, **kwargs)


def sampler(name: str, config: Any = None) -> Any:
    """A scheduler configured like the AUTOMATIC1111 sampler ``name`` (case-insensitive)."""
    from kernel.loading import sampler as _sampler

    return _sampler(name, config)


def samplers() -> list[str]:
    """The sampler names the installed plugins provide."""
    from kernel.loading import sampler_names

    return sampler_names()


def plugins() -> list[dict]:
    """Every visible plugin with its version, what it provides, and load errors."""
    from kernel.registry import get_registry

    return [p.to_dict() for p in get_registry().plugins.values()]


if TYPE_CHECKING:  # pragma: no cover
    from kernel.config import ConfigMixin, register_to_config  # noqa: F401
