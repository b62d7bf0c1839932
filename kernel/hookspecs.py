"""Behaviour hooks plugins implement with ``pluggy`` (module listed under ``kernel.hooks``).

    import pluggy
    hookimpl = pluggy.HookimplMarker("kernel")

    @hookimpl
    def kernel_detect_family(keys, shapes):
        if "model.diffusion_model.input_blocks.0.0.weight" in keys:
            return "sd"
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("kernel")
hookimpl = pluggy.HookimplMarker("kernel")


@hookspec(firstresult=True)
def kernel_detect_family(keys: frozenset, shapes: dict) -> str | None:
    """Name the family alias (``"sd"``, ``"sdxl"``...) a checkpoint belongs to, or ``None``.

    ``keys`` are the checkpoint's tensor names; ``shapes`` maps each name to its shape tuple.
    """


@hookspec(firstresult=True)
def kernel_convert_checkpoint(family: str, state_dict: dict) -> dict | None:
    """Convert a foreign checkpoint (original single-file, kohya LoRA ...) of ``family`` to
    Diffusers-named keys, or return ``None`` when this plugin does not handle it."""


@hookspec
def kernel_check_fits(family: str, model_index: dict) -> str | None:
    """Return a reason why ``model_index`` does not fit ``family`` (or ``None`` when it fits)."""
