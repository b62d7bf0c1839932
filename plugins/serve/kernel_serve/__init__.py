"""``kernel serve``, contributed to the ``kernel`` command through the ``kernel_register_commands`` hook.

This module is imported whenever the command line is built, so it imports neither torch nor
FastAPI: the server's modules load only when ``kernel serve`` runs.
"""

from kernel.hookspecs import hookimpl


@hookimpl
def kernel_register_commands(subparsers) -> None:
    from kernel_serve.command import add_serve_parser

    add_serve_parser(subparsers)
