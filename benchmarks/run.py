"""Benchmarks against Diffusers: one table, ours beside theirs, same weights, same run.

    python benchmarks/run.py            # full suite (under 30 minutes on 2 CPU cores)
    python benchmarks/run.py --quick    # short version (under 5 minutes)
    python benchmarks/run.py --only import,step

Each measurement runs in a fresh process (so imports and peak RSS are clean), alternating
ours and Diffusers; the table shows median (min-max) and the ratio of medians ours/theirs.
Weights are seeded random, built once by ``_weights.py`` into ``.bench-cache/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _weights  # noqa: E402


def worker(case: str, lib: str, args: dict | None = None) -> tuple[dict, float]:
    cmd = [sys.executable, str(HERE / "_worker.py"), case, lib, json.dumps(args or {})]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{case}/{lib} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, name: str, unit: str, ours: list[float], theirs: list[float], target: str = "") -> None:
        self.rows.append((name, unit, ours, theirs, target))
        self.print_row(self.rows[-1])

    @staticmethod
    def fmt(values: list[float]) -> str:
        if not values:
            return "-"
        med = statistics.median(values)
        return f"{med:8.3f} ({min(values):.3f}-{max(values):.3f})"

    def print_row(self, row) -> None:
        name, unit, ours, theirs, target = row
        ratio = statistics.median(ours) / statistics.median(theirs) if ours and theirs else float("nan")
        print(f"{name:<34} {unit:<4} {self.fmt(ours):>26} {self.fmt(theirs):>26} {ratio:7.2f}  {target}", flush=True)

    def header(self) -> None:
        print(f"{'benchmark':<34} {'unit':<4} {'ours median (min-max)':>26} {'diffusers median (min-max)':>26} "
              f"{'ratio':>7}  target", flush=True)


def warm_page_cache(folder: Path) -> None:
    """Read every weight file once so no library pays for the first read from disk."""
    for f in sorted(folder.rglob("*.safetensors")):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def repeat(n: int, case: str, args: dict, key: str = "seconds", use_wall: bool = False):
    """Alternate which library goes first, so neither always gets the warmer machine."""
    ours, theirs = [], []
    for i in range(n):
        pair = [("ours", ours), ("diffusers", theirs)]
        for lib, bucket in (pair if i % 2 == 0 else pair[::-1]):
            res, wall = worker(case, lib, args)
            bucket.append(wall if use_wall else res[key])
    return ours, theirs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="")
    opts = parser.parse_args(argv)
    only = set(filter(None, opts.only.split(",")))
    n = 3 if opts.quick else 5
    table = Table()
    table.header()

    def want(name: str) -> bool:
        return not only or name in only

    if want("import"):
        ours = [worker("import", "ours", {})[0]["seconds"] for _ in range(n)]
        table.add("import kernel (alone)", "s", ours, [], "< 0.050 s")
        o, t = repeat(n, "import", {"resolve": "StableDiffusionXLPipeline"})
        table.add("import + resolve SDXL pipeline", "s", o, t, "<= 0.5")
    tiny = _weights.tiny_folder()
    if want("cold_start"):
        with tempfile.TemporaryDirectory() as tmp:
            o, t = repeat(n, "cold_start", {"folder": str(tiny), "out": f"{tmp}/x.png"}, use_wall=True)
        table.add("cold start: tiny SD, 2 steps, PNG", "s", o, t, "<= 0.6")
    if want("load") or want("step") or want("pipeline"):
        sd15 = _weights.sd15_folder()
    if want("load"):
        warm_page_cache(sd15)
        reps = 3
        for fp16 in (False, True):
            label = "fp16" if fp16 else "fp32"
            args = {"folder": str(sd15), "fp16": fp16}
            ours_t, theirs_t, ours_m, theirs_m = [], [], [], []
            for i in range(reps):
                for lib in (("ours", "diffusers") if i % 2 == 0 else ("diffusers", "ours")):
                    r, _ = worker("load", lib, args)
                    (ours_t if lib == "ours" else theirs_t).append(r["seconds"])
                    (ours_m if lib == "ours" else theirs_m).append(r["peak_rss_mb"])
            size_mb = _weights.weights_bytes(sd15, "fp16" if fp16 else None) / 2**20
            table.add(f"load SD1.5-shaped {label}", "s", ours_t, theirs_t, "<= 0.5")
            table.add(f"load SD1.5-shaped {label} peak RSS", "MB", ours_m, theirs_m,
                      f"ours <= 1.2 x weights ({1.2 * size_mb:.0f} MB)")
    if want("step"):
        args = {"folder": str(sd15), "latent": 64, "repeats": 2 if opts.quick else 3}
        if not opts.quick:  # separate processes (clean, but this VM's per-process speed modes add noise)
            o, t = repeat(2, "step", args)
            table.add("UNet step 512px batch 2 fp32 CPU", "s", o, t, "<= 0.95")
        res, _ = worker("step_ab", "ours", {"folder": str(sd15), "latent": 64, "rounds": 2 if opts.quick else 4})
        table.add("UNet step 512px b2 fp32, one process", "s", res["ours"], res["diffusers"], "<= 0.95")
    if want("pipeline"):
        args = {"folder": str(sd15), "size": 128 if opts.quick else 256, "steps": 4 if opts.quick else 10}
        ours_t, theirs_t, ours_m, theirs_m = [], [], [], []
        for _ in range(1 if opts.quick else 2):
            r, _ = worker("pipeline", "ours", args)
            ours_t.append(r["seconds"]); ours_m.append(r["peak_rss_mb"])
            r, _ = worker("pipeline", "diffusers", args)
            theirs_t.append(r["seconds"]); theirs_m.append(r["peak_rss_mb"])
        label = f"{args['size']}px {args['steps']} steps"
        table.add(f"SD1.5-shaped pipeline {label}", "s", ours_t, theirs_t, "<= 0.95")
        table.add(f"SD1.5-shaped pipeline {label} RSS", "MB", ours_m, theirs_m, "<= 1.0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
