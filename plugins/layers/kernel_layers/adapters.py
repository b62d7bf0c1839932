"""The per-call adapter scale: ``cross_attention_kwargs={"scale": s}`` and ``encode_prompt(lora_scale=s)``.

Shared by the conditioners, the denoisers and the LoRA plugin, which do not depend on one another.

Diffusers multiplies the weight of every active LoRA by the call's ``scale`` while the text
encoders and the denoiser run, and takes it back afterwards.  Conditioner and denoiser plugins
honour that argument through :func:`adapter_scale`, without knowing which adapter library made
the layers: an adapter layer is any submodule with a ``scale_layer(factor)`` method and a
``scaling`` dict of per-adapter factors (peft's LoRA layers have both).  The factors are
restored exactly afterwards (copied back, not divided), so scale 0 and repeated calls are safe.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


def adapter_layers(modules: Any) -> list[Any]:
    """The adapter layers inside ``modules`` (one module, ``None``, or an iterable of them)."""
    if modules is None:
        return []
    if hasattr(modules, "modules"):
        modules = [modules]
    found = []
    for root in modules:
        if root is None:
            continue
        found.extend(m for m in root.modules() if hasattr(m, "scale_layer") and isinstance(getattr(m, "scaling", None), dict))
    return found


@contextlib.contextmanager
def adapter_scale(modules: Any, scale: float | None) -> Iterator[None]:
    """Multiply every active adapter's weight inside ``modules`` by ``scale`` for the ``with`` block.

    ``scale`` ``None`` or 1 changes nothing.  The previous factors come back exactly on exit,
    also when the block raises.
    """
    if scale is None or scale == 1:
        yield
        return
    layers = adapter_layers(modules)
    saved = [(layer, dict(layer.scaling)) for layer in layers]
    try:
        for layer in layers:
            layer.scale_layer(scale)
        yield
    finally:
        for layer, factors in saved:
            layer.scaling.clear()
            layer.scaling.update(factors)

