"""``kernel generate``, contributed to the ``kernel`` command through the ``kernel_register_commands`` hook.

This module is imported when the command line is built, so it imports neither torch nor the
command's own module until the command runs.
"""

from kernel.hookspecs import hookimpl


@hookimpl
def kernel_register_commands(subparsers) -> None:
    from kernel_generate.command import add_generate_parser

    add_generate_parser(subparsers)
