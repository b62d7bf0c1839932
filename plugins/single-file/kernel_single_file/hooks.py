"""kernel-single-file's hook implementations: families, detection, conversion, ``kernel convert``.

Imported when a hook is first called; it imports neither torch nor the converters until they run.
"""

from __future__ import annotations

from kernel.hookspecs import hookimpl


@hookimpl
def kernel_single_file_families() -> dict:
    from kernel_single_file.families import CONFIGS, FAMILIES

    return {family: CONFIGS / family for family in FAMILIES}


@hookimpl
def kernel_detect_family(shapes: dict) -> str | None:
    from kernel_single_file.families import detect

    return detect(shapes)


@hookimpl
def kernel_convert_checkpoint(family: str, component: str, checkpoint, model, options: dict) -> dict | None:
    from kernel_single_file.convert import to_diffusers

    return to_diffusers(family, component, checkpoint, model, options)


@hookimpl
def kernel_register_commands(subparsers) -> None:
    from kernel_single_file.command import add_convert_parser

    add_convert_parser(subparsers)
