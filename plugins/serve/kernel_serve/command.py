"""``kernel serve``: the HTTP API and web page over the embedded default model (or ``--model``).

    kernel serve                                   # http://127.0.0.1:7860, the embedded model
    kernel serve --model ./my-sd-folder --outputs ./pictures
    kernel serve --host 0.0.0.0 --token s3cret     # reachable from other machines: a token is required

The command checks its options before torch and FastAPI are imported, so mistakes are one line.
"""

from __future__ import annotations

import argparse
import os

from kernel_serve.config import DEFAULT_HOST, DEFAULT_PORT, MAX_BATCH, MAX_SIZE, MAX_STEPS, QUEUE_LIMIT, \
    ServeConfig, check_host

TOKEN_ENV = "KERNEL_SERVE_TOKEN"


def _split_devices(values: list[str] | None) -> tuple[str, ...]:
    return tuple(d.strip() for v in values or () for d in v.split(",") if d.strip())


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve an HTTP API with a job queue and a web page",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}; "
                   "any other than this machine's needs --token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--model", default=None, help="default model: folder, Hub id or installed model name "
                   "(default: the embedded one)")
    p.add_argument("--model-dir", action="append", default=None, metavar="DIR",
                   help="a folder of model folders the API may name (repeatable)")
    p.add_argument("--outputs", default="outputs", help="folder for the PNGs and the job history (default outputs)")
    p.add_argument("--token", default=None, help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV})")
    p.add_argument("--device", action="append", default=None,
                   help="device(s), one worker each: cpu, cuda, cuda:1 ... (repeatable or comma list; "
                        "default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=("auto", "float32", "float16", "bfloat16"),
                   help="weights dtype (default: float16 on CUDA, else float32)")
    p.add_argument("--max-steps", type=int, default=MAX_STEPS, help=f"most steps a job may ask (default {MAX_STEPS})")
    p.add_argument("--max-size", type=int, default=MAX_SIZE,
                   help=f"most pixels on a side a job may ask (default {MAX_SIZE})")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH, help=f"most pictures per job (default {MAX_BATCH})")
    p.add_argument("--queue-limit", type=int, default=QUEUE_LIMIT,
                   help=f"most waiting jobs; more get HTTP 429 (default {QUEUE_LIMIT})")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run_serve)
    return p


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    check_host(args.host, token)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    for d in args.model_dir or ():
        if not os.path.isdir(d):
            raise ValueError(f"--model-dir {d!r} is not a folder")
    return ServeConfig(outputs=args.outputs, model=args.model, model_dirs=tuple(args.model_dir or ()),
                       devices=_split_devices(args.device), dtype=args.dtype, token=token,
                       max_steps=args.max_steps, max_size=args.max_size, max_batch=args.max_batch,
                       queue_limit=args.queue_limit)


def run_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    import uvicorn

    from kernel_serve.app import create_app

    app = create_app(config)
    print(f"kernel serve: http://{args.host}:{args.port}/  (API docs at /docs; outputs in {config.outputs})",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
