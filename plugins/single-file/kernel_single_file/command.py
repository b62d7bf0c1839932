"""``kernel convert SOURCE OUT``: a single file to a Diffusers folder, or a Diffusers folder to a single file.

The direction follows ``SOURCE``: a file is converted to a folder, a folder to a ``.safetensors`` file.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_convert_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a single-file checkpoint to a Diffusers folder, or a Diffusers folder to a single file",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a .safetensors/.ckpt single file, or a Diffusers folder")
    p.add_argument("out", help="the folder (or .safetensors file) to write")
    p.add_argument("--config", help="file -> folder: a local Diffusers folder with the configs and tokenizers "
                                    "(default: the bundled configs of the detected family)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="cast floating weights")
    p.add_argument("--family", help="folder -> file: the layout to write (default: read from the folder)")
    p.add_argument("--components", help="folder -> file: comma list of components to write (e.g. unet)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from kernel_single_file.folders import DTYPES, to_diffusers_folder, to_single_file

    source = Path(args.source)
    if source.is_dir():
        if args.config:
            raise ValueError("--config applies to file -> folder conversions; this source is a folder")
        components = [c.strip() for c in args.components.split(",") if c.strip()] if args.components else None
        out = to_single_file(source, args.out, family=args.family, components=components, dtype=args.dtype)
    elif source.is_file():
        if args.family or args.components:
            raise ValueError("--family and --components apply to folder -> file conversions; this source is a file")
        out = to_diffusers_folder(source, args.out, config=args.config, torch_dtype=DTYPES.get(args.dtype))
    else:
        raise FileNotFoundError(f"no file or folder {source}")
    print(f"wrote {out}")
    return 0
