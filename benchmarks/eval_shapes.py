"""Quality of the embedded shapes model on held-out captions, measured by the shapes detector.

    .venv/bin/python benchmarks/eval_shapes.py                    # 100 held-out captions, embedded model
    .venv/bin/python benchmarks/eval_shapes.py --count 20 --model models/shapes-64 --json out.json

Prints the fraction of pictures whose detected colour, shape, position, size and background
match the caption.  Bars (issue 6): colour >= 0.90, shape >= 0.80, position >= 0.80.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BARS = {"colour": 0.90, "shape": 0.80, "position": 0.80}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="folder, Hub id or installed model name (default: embedded)")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--sampler", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--json", default=None, help="write the full result (per caption) here")
    p.add_argument("--grid", default=None, help="write a contact sheet of the pictures here (PNG)")
    args = p.parse_args(argv)

    import torch

    import kernel
    from kernel_generate.command import DEFAULT_GUIDANCE, grid, resolve_model
    from kernel_shapes_model.evaluate import ATTRIBUTES, evaluate

    torch.set_grad_enabled(False)
    name, source = resolve_model(args.model)
    pipe = kernel.load(source)
    pipe.set_progress_bar_config(disable=True)
    if args.sampler:
        pipe.scheduler = kernel.sampler(args.sampler, pipe.scheduler.config)
    guidance = DEFAULT_GUIDANCE if args.guidance is None else args.guidance
    result = evaluate(pipe, count=args.count, steps=args.steps, guidance=guidance, seed=args.seed,
                      batch_size=args.batch_size, keep_images=bool(args.grid))
    if args.grid:
        grid(result.pop("images")).save(args.grid)
    print(f"model {name} ({source}), {result['count']} held-out captions, {args.steps} steps, "
          f"sampler {args.sampler or type(pipe.scheduler).__name__}, guidance {guidance}, {result['seconds']} s")
    for a in (*ATTRIBUTES, "all"):
        bar = BARS.get(a)
        mark = "" if bar is None else ("  (bar %.2f: %s)" % (bar, "ok" if result[a] >= bar else "BELOW"))
        print(f"  {a:<10} {result[a]:.2f}{mark}")
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in result.items()}, indent=1))
    return 0 if all(result[a] >= b for a, b in BARS.items()) else 1


if __name__ == "__main__":
    sys.exit(main())
