"""Per-step cost of an unfused LoRA and ``fuse_lora`` time, ours / Diffusers, on an SD1.5-shaped UNet on the CPU.

    python benchmarks/lora_step.py                       # rank 64, attention + feed-forward, 256 px, 2 rounds
    python benchmarks/lora_step.py --rank 16 --targets attention --size 64 --steps 4 --rounds 3

The LoRA (seeded random weights, fp32, peft layout) targets the SD1.5 UNet's attention projections and, by
default, its transformer blocks' feed-forward and ``proj_in`` / ``proj_out`` layers; it is written once into
``.bench-cache/``.  Each round runs in a fresh process that builds both libraries' UNets (seeded random weights)
and interleaves their measurements (which goes first alternates), so load from other processes falls on both alike:
UNet forward steps (batch 1, ``--size`` px, so ``--size / 8`` latents) without LoRA, with the LoRA loaded by
``pipe.load_lora_weights`` (unfused), the ``pipe.fuse_lora()`` call, and the fused steps.  The overhead is the
unfused step minus the plain step (medians of ``--steps``).  Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _weights  # noqa: E402

UNET_SD15 = dict(sample_size=64, cross_attention_dim=768)  # Diffusers' defaults are SD1.5's UNet otherwise
TARGETS = {"attention": ("to_q", "to_k", "to_v", "to_out.0"),
           "all": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")}


def _unet(lib: str):
    import torch

    if lib == "ours":
        import kernel

        cls = kernel.component("UNet2DConditionModel")
    else:
        from diffusers import UNet2DConditionModel as cls
    with torch.device("meta"):
        unet = cls(**UNET_SD15)
    unet = unet.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():  # values only need to be ordinary numbers (no denormals, no NaN)
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return unet


def lora_file(rank: int, targets: str) -> Path:
    """Write (once) the seeded random LoRA in the peft layout (``unet.<layer>.lora_A.weight``)."""
    path = _weights.CACHE / f"lora-sd15-r{rank}-{targets}.safetensors"
    if path.is_file():
        return path
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    state = {}
    for name, module in _unet("diffusers").named_modules():
        if not name.endswith(TARGETS[targets]):
            continue
        if isinstance(module, torch.nn.Linear):
            down, up = (rank, module.in_features), (module.out_features, rank)
        elif isinstance(module, torch.nn.Conv2d):  # proj_in / proj_out of SD1.5 are 1x1 convolutions
            down, up = (rank, module.in_channels, 1, 1), (module.out_channels, rank, 1, 1)
        else:
            continue
        state[f"unet.{name}.lora_A.weight"] = torch.randn(down, generator=g) / down[1] ** 0.5
        state[f"unet.{name}.lora_B.weight"] = torch.randn(up, generator=g) * 0.01
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def _pipe(lib: str):
    """An SD pipeline around a fresh SD1.5-shaped UNet (no other components: only the UNet runs)."""
    blank = dict(vae=None, text_encoder=None, tokenizer=None, safety_checker=None, feature_extractor=None,
                 requires_safety_checker=False)
    if lib == "ours":
        import kernel

        return kernel.component("StableDiffusionPipeline")(**blank, unet=_unet(lib),
                                                           scheduler=kernel.component("EulerDiscreteScheduler")())
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(**blank, unet=_unet(lib), scheduler=EulerDiscreteScheduler())


def run_worker(file: str, size: int, steps: int, threads: int | None, first: str) -> dict:
    """Both libraries in this process, their measurements interleaved (``first`` starts each pair), so load
    from other processes on the machine falls on both alike."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    libs = (first, "diffusers" if first == "ours" else "ours")
    pipes = {lib: _pipe(lib) for lib in libs}
    g = torch.Generator().manual_seed(2)
    latent = size // 8
    inputs = dict(sample=torch.randn(1, 4, latent, latent, generator=g), timestep=torch.tensor(500),
                  encoder_hidden_states=torch.randn(1, 77, 768, generator=g))
    out: dict[str, dict] = {lib: {} for lib in libs}

    @torch.no_grad()
    def interleaved(key: str) -> None:
        for lib in libs:
            pipes[lib].unet(**inputs)  # warm-up
        times: dict[str, list[float]] = {lib: [] for lib in libs}
        for i in range(steps):
            for lib in (libs if i % 2 == 0 else libs[::-1]):
                t0 = time.perf_counter()
                pipes[lib].unet(**inputs)
                times[lib].append(time.perf_counter() - t0)
        for lib in libs:
            out[lib][key] = statistics.median(times[lib])

    interleaved("plain")
    for lib in libs:
        pipes[lib].load_lora_weights(file, adapter_name="bench")
        out[lib]["layers"] = sum(1 for m in pipes[lib].unet.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer"))
    interleaved("unfused")
    for lib in libs:
        t0 = time.perf_counter()
        pipes[lib].fuse_lora()
        out[lib]["fuse"] = time.perf_counter() - t0
    interleaved("fused")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--targets", choices=tuple(TARGETS), default="all")
    p.add_argument("--size", type=int, default=256, help="image size in pixels (latents are size / 8)")
    p.add_argument("--steps", type=int, default=6, help="timed UNet steps per library and round (median)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--worker", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.file, args.size, args.steps, args.threads, args.worker)))
        return
    file = lora_file(args.rank, args.targets)
    print(f"LoRA: {file.name} ({file.stat().st_size / 2**20:.0f} MiB, rank {args.rank}); UNet step at {args.size} px, "
          f"batch 1, median of {args.steps}")
    results: dict[str, list[dict]] = {"ours": [], "diffusers": []}
    for r in range(args.rounds):
        first = "ours" if r % 2 == 0 else "diffusers"
        cmd = [sys.executable, __file__, "--worker", first, "--file", str(file), "--size", str(args.size),
               "--steps", str(args.steps)] + (["--threads", str(args.threads)] if args.threads else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"round {r + 1} failed:\n{out.stderr[-3000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        for lib in ("ours", "diffusers"):
            row = res[lib]
            results[lib].append(row)
            print(f"  round {r + 1} {lib:<9} plain {row['plain']:.3f} s  unfused {row['unfused']:.3f} s  "
                  f"fuse_lora {row['fuse']:.3f} s  fused {row['fused']:.3f} s  ({row['layers']} LoRA layers)", flush=True)

    def med(lib: str, key: str) -> float:
        return statistics.median(r[key] for r in results[lib])

    for label, key in (("plain step", "plain"), ("unfused LoRA step", "unfused"), ("fused step", "fused"),
                       ("fuse_lora", "fuse")):
        ours, theirs = med("ours", key), med("diffusers", key)
        print(f"{label:<20} ours {ours:.3f} s  diffusers {theirs:.3f} s  ratio {ours / theirs:.2f}")
    over = {lib: statistics.median(r["unfused"] - r["plain"] for r in results[lib]) for lib in results}
    print(f"{'LoRA overhead/step':<20} ours {over['ours']:.3f} s ({over['ours'] / med('ours', 'plain'):.1%})  "
          f"diffusers {over['diffusers']:.3f} s ({over['diffusers'] / med('diffusers', 'plain'):.1%})  "
          f"ratio {over['ours'] / over['diffusers']:.2f}")


if __name__ == "__main__":
    main()
