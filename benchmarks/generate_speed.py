"""Speed of ``kernel generate`` on the embedded model, beside Diffusers on the same folder.

    .venv/bin/python benchmarks/generate_speed.py [--repeats 5] [--json benchmarks/generate_speed.json]

Measures, on this machine, in this run:

* ``generate_s``: one 20-step picture after start-up (pipeline loaded), median of ``--repeats``,
  in a process that runs exactly what ``kernel generate`` runs;
* ``process_s``: the whole ``kernel generate "..."`` process, from spawn to exit (imports,
  loading, generating, writing the PNG);
* the same two for Diffusers' ``StableDiffusionPipeline`` loading the same folder, plus load times.

The bar (issue 6): ``generate_s`` under 3 s on the project's 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a blue star at the center on a black background"
STEPS = 20

INNER = r"""
import json, sys, time
t0 = time.perf_counter()
lib, folder, steps, repeats, prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
import torch
if lib == "kernel":
    import kernel
    pipe = kernel.load(folder)
else:
    import diffusers
    diffusers.utils.logging.disable_progress_bar()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.scheduler = getattr(diffusers, type(pipe.scheduler).__name__).from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
t_load = time.perf_counter() - t0
times = []
for r in range(repeats + 1):
    g = torch.Generator().manual_seed(r)
    t = time.perf_counter()
    with torch.inference_mode():
        image = pipe(prompt, num_inference_steps=steps, guidance_scale=5.0, generator=g).images[0]
    if r:  # the first call warms up
        times.append(time.perf_counter() - t)
print(json.dumps({"startup_s": t_load, "generate_s": times}))
"""

DIFFUSERS_PROCESS = r"""
import sys, torch, diffusers
pipe = diffusers.StableDiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None)
image = pipe(sys.argv[2], num_inference_steps=20, guidance_scale=5.0, generator=torch.Generator().manual_seed(0)).images[0]
image.save(sys.argv[3])
"""


def run_inner(lib: str, folder: str, repeats: int) -> dict:
    out = subprocess.run([sys.executable, "-c", INNER, lib, folder, str(STEPS), str(repeats), PROMPT],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{lib} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{cmd[:3]} failed:\n{out.stderr[-2000:]}")
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--processes", type=int, default=3, help="whole-process runs of each")
    p.add_argument("--no-diffusers", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from kernel_generate.command import resolve_model

    _, folder = resolve_model(None)
    kernel_bin = str(Path(sys.executable).with_name("kernel"))
    result: dict = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
                    "load_average": os.getloadavg(), "steps": STEPS, "prompt": PROMPT, "model": folder}
    libs = ["kernel"] + ([] if args.no_diffusers else ["diffusers"])
    with tempfile.TemporaryDirectory() as tmp:
        for lib in libs:
            inner = run_inner(lib, folder, args.repeats)
            if lib == "kernel":
                cmd = [kernel_bin, "generate", PROMPT, "--steps", str(STEPS), "--seed", "0", "--no-progress",
                       "--out", f"{tmp}/k.png"]
            else:
                cmd = [sys.executable, "-c", DIFFUSERS_PROCESS, folder, PROMPT, f"{tmp}/d.png"]
            processes = [wall(cmd) for _ in range(args.processes)]
            result[lib] = {"startup_s": round(inner["startup_s"], 3),
                           "generate_s_median": round(statistics.median(inner["generate_s"]), 3),
                           "generate_s": [round(t, 3) for t in inner["generate_s"]],
                           "process_s_median": round(statistics.median(processes), 3),
                           "process_s": [round(t, 3) for t in processes]}
            print(f"{lib:<10} start-up {result[lib]['startup_s']:.2f} s, one {STEPS}-step picture "
                  f"{result[lib]['generate_s_median']:.3f} s (median of {args.repeats}), whole process "
                  f"{result[lib]['process_s_median']:.2f} s (median of {args.processes})", flush=True)
    if "diffusers" in result:
        result["ratio_generate"] = round(result["kernel"]["generate_s_median"] / result["diffusers"]["generate_s_median"], 3)
        result["ratio_process"] = round(result["kernel"]["process_s_median"] / result["diffusers"]["process_s_median"], 3)
        print(f"ratio ours/diffusers: generate {result['ratio_generate']}, whole process {result['ratio_process']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["kernel"]["generate_s_median"] < 3.0 else 1


if __name__ == "__main__":
    sys.exit(main())
