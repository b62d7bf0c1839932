"""Context-parallel step time of a Flux-shaped transformer on several GPUs (issue 20's prepared GPU rows).

    python benchmarks/context_parallel.py [--gpus N] [--side 128] [--rounds 3] [--json out.json]

Each mode starts ``torchrun --nproc_per_node N`` (NCCL) on this script; every rank builds the same seeded
transformer (Flux-dev width, 2 double + 4 single blocks, bf16; ``--side`` latent pixels a side, so
``(side/2)^2`` image tokens plus 512 text tokens), turns on ``enable_parallelism`` with Ulysses (degree N)
or ring attention (degree N), and times forwards after a warm-up.  The single-GPU row is the same model
without parallelism.  Printed: ms per forward for each, the speed-up against one GPU and the largest
difference of the gathered output from the single-GPU output.  Needs at least 2 CUDA devices: with fewer it
says so and exits 0 (the lent machines have had one GPU so far; this has not run yet).
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

HERE = Path(__file__).resolve().parent
FLUX = dict(in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=128, num_attention_heads=24,
            joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=[16, 56, 56], guidance_embeds=True)


def worker(args: argparse.Namespace) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    import kernel
    from gpu_bench import flux_inputs  # the GPU suite's Flux inputs (same ids, same seeds)

    parallel = args.mode != "single"
    if parallel:
        from kernel_distributed import ContextParallelConfig, init_distributed

        rank, world, device = init_distributed()
    else:
        rank, world, device = 0, 1, torch.device("cuda")
    torch.manual_seed(0)
    with torch.device(device):
        model = kernel.component("FluxTransformer2DModel")(**FLUX).to(torch.bfloat16).eval()
    inputs = flux_inputs(dict(flux=FLUX, flux_latent=args.side, flux_text=512), device, torch.bfloat16)
    if parallel:
        degree = {"ulysses_degree": world} if args.mode == "ulysses" else {"ring_degree": world}
        model.enable_parallelism(config=ContextParallelConfig(**degree))
    with torch.inference_mode():
        out = model(**inputs, return_dict=False)[0]
        times = []
        for _ in range(args.rounds):
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                model(**inputs, return_dict=False)
            torch.cuda.synchronize(device)
            times.append((time.perf_counter() - t0) / args.repeats * 1e3)
    if rank == 0:
        torch.save(out.float().cpu(), args.out)
        print(json.dumps({"mode": args.mode, "world": world, "ms": sorted(times)[len(times) // 2]}), flush=True)
    if parallel:
        import torch.distributed as dist

        dist.destroy_process_group()


def run(mode: str, gpus: int, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--side", str(args.side), "--rounds", str(args.rounds),
           "--repeats", str(args.repeats), "--out", str(out)]
    if mode != "single":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus),
               "--master_addr", "127.0.0.1", "--master_port", str(port)] + cmd[1:]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=None, help="processes (default: every visible GPU)")
    p.add_argument("--side", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", default=None)
    p.add_argument("--worker", choices=("single", "ulysses", "ring"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    import tempfile

    import torch

    gpus = args.gpus or torch.cuda.device_count()
    if gpus < 2:
        print(f"# context-parallel rows need 2 or more CUDA devices; this machine has {torch.cuda.device_count()}")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="kbench-cp-") as tmp:
        single = run("single", 1, args, Path(tmp) / "single.pt")
        reference = torch.load(Path(tmp) / "single.pt", weights_only=True)
        print(f"Flux-shaped 2+4 blocks, {(args.side // 2) ** 2} image tokens, 1 GPU: {single['ms']:.1f} ms")
        for mode in ("ulysses", "ring"):
            row = run(mode, gpus, args, Path(tmp) / f"{mode}.pt")
            diff = float((torch.load(Path(tmp) / f"{mode}.pt", weights_only=True) - reference).abs().max())
            row.update(speedup=single["ms"] / row["ms"], max_diff=diff)
            rows.append(row)
            print(f"{mode:<8} {gpus} GPUs: {row['ms']:.1f} ms, speed-up {row['speedup']:.2f}x, "
                  f"max|parallel-single| {diff:.3g}")
    if args.json or os.environ.get("OUT"):
        path = args.json or os.path.join(os.environ["OUT"], "context_parallel.json")
        Path(path).write_text(json.dumps({"single": single, "parallel": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
