"""Data-parallel scaling of generation on the CPU: images per second with 2 processes against 1.

    .venv/bin/python benchmarks/data_parallel.py [--prompts 8] [--steps 20] [--rounds 2] [--json out.json]

Both runs start through ``torchrun`` (gloo) and do what ``kernel generate --batch-file`` does: the
prompts shared out by accelerate's ``PartialState.split_between_processes`` (kernel-distributed),
the embedded model loaded in each process, prompt ``i`` drawn with seed ``i``.  Timed: the generation
of all the prompts, from a barrier after loading to the barrier after the last picture (start-up is
printed apart), best of ``--rounds``.  Runs: one process on every core, one process on half of them
(on a shared or small machine extra threads can cost more than they give), and two processes on half
each.  Printed: images/s of each and the ratio of the 2-process run to the faster 1-process run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = ["a red circle at the top left on a white background", "a blue star at the center on a black background",
           "a green square at the bottom right on a black background", "a yellow triangle on a white background"]


def inner(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    import torch
    import torch.distributed as dist

    from kernel_distributed import init_distributed, split_prompts
    from kernel_generate.command import render, resolve_model
    import kernel

    init_distributed(backend="gloo")
    world = dist.get_world_size()
    torch.set_num_threads(args.threads)
    pipe = kernel.load(resolve_model(None)[1])
    pipe.set_progress_bar_config(disable=True)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    mine = split_prompts(prompts)
    render(pipe, "warm-up", None, steps=2, guidance=5.0, seed=0, width=64, height=64)
    startup = time.perf_counter() - t0
    rounds = []
    for _ in range(args.rounds):
        dist.barrier()
        t = time.perf_counter()
        for i, prompt in mine:
            render(pipe, prompt, None, steps=args.steps, guidance=5.0, seed=i, width=64, height=64)
        dist.barrier()
        rounds.append(time.perf_counter() - t)
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps({"processes": world, "threads": torch.get_num_threads(), "startup_s": startup,
                                       "generate_s": rounds}), flush=True)
    dist.destroy_process_group()


def launch(n: int, threads: int, args: argparse.Namespace) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
           f"--master_port={port}", str(Path(__file__).resolve()), "--inner", "--prompts", str(args.prompts),
           "--steps", str(args.steps), "--rounds", str(args.rounds), "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode:
        sys.exit(f"{n}-process run failed:\n{out.stderr[-3000:]}")
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["process_wall_s"] = wall
    result["images_per_s"] = args.prompts / min(result["generate_s"])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per run (the best is kept)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.prompts < 2 or args.steps < 1 or args.rounds < 1:
        p.error("--prompts must be >= 2, --steps and --rounds >= 1")
    if args.inner:
        inner(args)
        return
    cores = os.cpu_count() or 1
    half = max(1, cores // 2)
    runs = [launch(1, cores, args), launch(1, half, args), launch(2, half, args)]
    one, two = max(runs[:2], key=lambda r: r["images_per_s"]), runs[2]
    print(f"CPU cores: {cores}; {args.prompts} prompts x {args.steps} steps, embedded model, 64x64")
    print(f"{'processes':>9} {'threads':>7} {'images/s':>9} {'generate s':>10} {'start-up s':>10} {'process s':>9}")
    for r in runs:
        print(f"{r['processes']:>9} {r['threads']:>7} {r['images_per_s']:>9.2f} {min(r['generate_s']):>10.2f} "
              f"{r['startup_s']:>10.2f} {r['process_wall_s']:>9.1f}")
    print(f"ratio 2 processes / best 1 process (images/s): {two['images_per_s'] / one['images_per_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "ratio": two["images_per_s"] / one["images_per_s"]},
                                              indent=2))


if __name__ == "__main__":
    main()
