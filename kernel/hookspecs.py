"""Behaviour hooks plugins implement with ``pluggy`` (module listed under ``kernel.hooks``).

    import pluggy
    hookimpl = pluggy.HookimplMarker("kernel")

    @hookimpl
    def kernel_check_fits(family, model_index):
        if family == "mine" and "transformer" not in model_index:
            return "a 'mine' folder has a transformer"

Every hook here has a caller in the kernel; the single-file loader will add family detection and
checkpoint conversion hooks together with the code that calls them.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("kernel")
hookimpl = pluggy.HookimplMarker("kernel")


@hookspec
def kernel_check_fits(family: str, model_index: dict) -> str | None:
    """Return a reason why ``model_index`` does not fit ``family`` (or ``None`` when it fits)."""


@hookspec
def kernel_register_commands(subparsers) -> None:
    """Add subcommands to the ``kernel`` command line (``subparsers`` from :mod:`argparse`); each sets
    ``func`` with ``set_defaults(func=...)``, called with the parsed arguments and returning an exit code."""
