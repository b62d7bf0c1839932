"""CogVideoX on the CPU: transformer step time and peak RSS, tiled VAE decode of 49 frames; ours against Diffusers.

    python benchmarks/video_step.py                      # tiny + reduced-depth 2B-shaped transformer, VAE decode
    python benchmarks/video_step.py --rounds 3 --threads 2 --json out.json

The weights are built once, from a seed, with Diffusers and saved as safetensors folders; every measurement
runs in a fresh process (``--worker``) that loads one library's model from that folder, so imports, loading
and peak RSS (``ru_maxrss``, the whole process) are its own.  Ours and Diffusers alternate, ``--rounds`` times.

* ``tiny``: the test suite's transformer (2 layers, width 32), 9 frames of 8x8 latents, batch 2 (guidance).
* ``2b-depth2``: CogVideoX-2b's shapes (30 heads x 64, text width 4096, patch 2, sincos positions) cut to
  2 layers; 2 latent frames of 16x16 (128 video tokens + 226 text tokens), batch 2.
* ``vae-49``: a small CogVideoX VAE (4 stages of width 16, 8x spatial, 4x temporal) decoding 13 latent frames
  into 49 frames of 64x64 with tiling on (tiles of 32 px).

A step is one forward; the worker times ``--steps`` forwards after two warm-up forwards and reports the
median (the VAE: ``--vae-steps`` decodes, no warm-up).  The
table gives the median over rounds of each library, the ratio ours / Diffusers (below 1 is faster) and the
largest difference between the two outputs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
            text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=7)
TWO_B = dict(num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
             text_embed_dim=4096, num_layers=2, sample_width=16, sample_height=16, sample_frames=5, patch_size=2,
             temporal_compression_ratio=4, max_text_seq_length=226)
VAE = dict(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
           up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(16, 16, 16, 16), latent_channels=4,
           layers_per_block=1, norm_num_groups=4, temporal_compression_ratio=4, sample_height=64, sample_width=64)
# name: (config, batch, latent frames, latent side)
CASES = {"tiny": (TINY, 2, 3, 8), "2b-depth2": (TWO_B, 2, 2, 16)}


def build(folder: Path) -> None:
    import torch

    import diffusers

    for i, (name, (config, *_)) in enumerate(CASES.items()):
        torch.manual_seed(i)
        diffusers.CogVideoXTransformer3DModel(**config).save_pretrained(folder / name)
    torch.manual_seed(9)
    diffusers.AutoencoderKLCogVideoX(**VAE).save_pretrained(folder / "vae-49")


def _cls(library: str, name: str):
    if library == "diffusers":
        import diffusers

        return getattr(diffusers, name)
    import kernel

    return kernel.component(name)


def worker(library: str, case: str, folder: Path, steps: int, out: Path) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    if case == "vae-49":
        vae = _cls(library, "AutoencoderKLCogVideoX").from_pretrained(folder / case).eval()
        module = type(vae).__module__
        load = time.perf_counter() - t0
        vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32)
        z = torch.randn(1, 4, 13, 8, 8, generator=g)
        times = []
        with torch.inference_mode():
            for _ in range(steps):
                t = time.perf_counter()
                video = vae.decode(z).sample
                times.append(time.perf_counter() - t)
        result = video
    else:
        config, batch, frames, side = CASES[case]
        model = _cls(library, "CogVideoXTransformer3DModel").from_pretrained(folder / case).eval()
        module = type(model).__module__
        load = time.perf_counter() - t0
        inputs = dict(hidden_states=torch.randn(batch, frames, config["in_channels"], side, side, generator=g),
                      encoder_hidden_states=torch.randn(batch, config["max_text_seq_length"], config["text_embed_dim"],
                                                        generator=g),
                      timestep=torch.full((batch,), 500, dtype=torch.long))
        times = []
        with torch.inference_mode():
            for _ in range(2):  # warm-up: the first forwards of a fresh process pay for allocation and thread start
                model(**inputs, return_dict=False)
            for _ in range(steps):
                t = time.perf_counter()
                result = model(**inputs, return_dict=False)[0]
                times.append(time.perf_counter() - t)
    torch.save(result, out)
    assert module.startswith("diffusers" if library == "diffusers" else "kernel_"), module
    return {"step_s": statistics.median(times), "load_s": load,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per library and case, alternating")
    parser.add_argument("--steps", type=int, default=3, help="timed forwards (decodes for the VAE) per process")
    parser.add_argument("--vae-steps", type=int, default=1, help="timed decodes per process")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the workers (default: torch's)")
    parser.add_argument("--json", help="also write the result to this file")
    parser.add_argument("--worker", nargs=4, metavar=("LIBRARY", "CASE", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        library, case, folder, out = args.worker
        steps = args.vae_steps if case == "vae-49" else args.steps
        print(json.dumps(worker(library, case, Path(folder), steps, Path(out))))
        return
    import torch

    rows = []
    with tempfile.TemporaryDirectory(prefix="kbench-video-") as tmp:
        folder = Path(tmp)
        build(folder)
        for case in (*CASES, "vae-49"):
            got = {"ours": [], "diffusers": []}
            for r in range(args.rounds):
                order = ("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours")
                for library in order:
                    cmd = [sys.executable, __file__, "--steps", str(args.steps), "--vae-steps", str(args.vae_steps),
                           "--worker", library, case, str(folder), str(folder / f"{library}.pt")]
                    if args.threads:
                        cmd[2:2] = ["--threads", str(args.threads)]
                    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    got[library].append(json.loads(done.stdout.strip().splitlines()[-1]))
            a = torch.load(folder / "ours.pt", weights_only=True)
            b = torch.load(folder / "diffusers.pt", weights_only=True)
            med = {k: {m: statistics.median(x[m] for x in v) for m in ("step_s", "load_s", "rss_mb")}
                   for k, v in got.items()}
            rows.append({"case": case, "ours": med["ours"], "diffusers": med["diffusers"],
                         "ratio": med["ours"]["step_s"] / med["diffusers"]["step_s"],
                         "rss_ratio": med["ours"]["rss_mb"] / med["diffusers"]["rss_mb"],
                         "max_diff": float((a.float() - b.float()).abs().max()), "shape": list(a.shape)})
    print(f"CogVideoX on the CPU, {args.rounds} fresh processes per library, medians "
          f"(threads: {args.threads or 'torch default'})")
    print("| case | output | ours step | Diffusers step | ratio | ours peak RSS | Diffusers peak RSS | ratio | max diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        o, d = row["ours"], row["diffusers"]
        print(f"| {row['case']} | {'x'.join(map(str, row['shape']))} | {o['step_s']:.3f} s | {d['step_s']:.3f} s | "
              f"{row['ratio']:.2f} | {o['rss_mb']:.0f} MB | {d['rss_mb']:.0f} MB | {row['rss_ratio']:.2f} | "
              f"{row['max_diff']:.1e} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
