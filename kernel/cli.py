"""The ``kernel`` command: ``kernel plugins``, ``kernel samplers``, and the commands plugins add
(``kernel generate`` comes from ``kernel-generate``) through the ``kernel_register_commands`` hook.

``kernel plugins`` and ``kernel samplers`` read package metadata and do not import torch
(``samplers`` imports only the sampler catalogues).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def _cmd_plugins(args: argparse.Namespace) -> int:
    from kernel.registry import get_registry

    registry = get_registry()
    if args.check:
        registry.check_all()
    plugins = [p.to_dict() for p in sorted(registry.plugins.values(), key=lambda p: p.name.lower())]
    if args.json:
        print(json.dumps(plugins, indent=2))
        return 0
    if not plugins:
        print("no plugins installed (or KERNEL_PLUGINS selects none)")
        return 0
    for p in plugins:
        names = [n for group in p["provides"].values() for n in group]
        print(f"{p['name']} {p['version']}: {', '.join(names) if names else '(nothing)'}")
        for err in p["errors"]:
            print(f"    error: {err}")
    return 0


def _cmd_samplers(args: argparse.Namespace) -> int:
    from kernel.loading import sampler_names

    names = sampler_names()
    if args.json:
        print(json.dumps(names))
    else:
        print("\n".join(names) if names else "no sampler catalogue installed (pip install kernel-samplers-a1111)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kernel", description="diffusion micro-kernel")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list installed plugins, what they provide and load errors")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--check", action="store_true", help="import every plugin to find load errors")
    p.set_defaults(func=_cmd_plugins)
    s = sub.add_parser("samplers", help="list sampler names (A1111 style) usable with --sampler")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_samplers)
    from kernel.registry import get_registry

    get_registry().hook.kernel_register_commands(subparsers=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, LookupError, ImportError, OSError) as err:
        print(f"kernel {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
