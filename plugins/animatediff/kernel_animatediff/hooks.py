"""kernel-animatediff's single-file hooks: original AnimateDiff motion-module checkpoints (see single_file.py)."""

from __future__ import annotations

from kernel.hookspecs import hookimpl


@hookimpl
def kernel_single_file_families() -> dict:
    from kernel_animatediff.single_file import CONFIGS, FAMILIES

    return {family: CONFIGS / family for family in FAMILIES}


@hookimpl
def kernel_detect_family(shapes: dict) -> str | None:
    from kernel_animatediff.single_file import detect

    return detect(shapes)


@hookimpl
def kernel_convert_checkpoint(family: str, component: str, checkpoint, model, options: dict) -> dict | None:
    from kernel_animatediff.single_file import to_diffusers

    return to_diffusers(family, component, checkpoint, model)
