"""Single-file load on the CPU, ours / Diffusers: wall time and peak RSS for an SD 1.5-sized (or, with
``--sdxl``, an SDXL-sized) random checkpoint in the original (LDM) layout.

    python benchmarks/single_file_load.py                 # SD 1.5 sized, fp16 file, 3 rounds
    python benchmarks/single_file_load.py --sdxl --rounds 2

The file (seeded random fp16 weights for the UNet, VAE and text encoders, plus ``alphas_cumprod``) and a
configs folder (the bundled configs of kernel-single-file plus a small tokenizer) are written once into
``.bench-cache/``.  Each measurement runs in a fresh process that warms the page cache with the file and
times ``StableDiffusion(XL)Pipeline.from_single_file(file, config=folder, torch_dtype=torch.float16)``,
the libraries alternating which goes first.  Nothing is downloaded (``HF_HUB_OFFLINE=1``).
Goals (issue 15): time ratio <= 0.5, peak RSS <= 1.2 x the file size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _weights  # noqa: E402

FAMILIES = {"sd15": ("sd-v1", "StableDiffusionPipeline"), "sdxl": ("sdxl-base", "StableDiffusionXLPipeline")}


def checkpoint(name: str) -> tuple[Path, Path]:
    """(single file, configs folder) for ``name``, written once."""
    family, _ = FAMILIES[name]
    file, folder = _weights.CACHE / f"single-{name}.safetensors", _weights.CACHE / f"single-{name}-config"
    if file.is_file() and folder.is_dir():
        return file, folder
    import torch
    from safetensors.torch import save_file

    from kernel.checkpoints import config_folder, empty
    from kernel.pipeline import resolve_class
    from kernel_single_file.convert import to_original

    bundled = config_folder(family)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(bundled, folder)
    for tok in ("tokenizer", "tokenizer_2"):
        if json.loads((folder / "model_index.json").read_text()).get(tok, [None])[0]:
            _weights.write_tokenizer(folder / tok)
    generator = torch.Generator().manual_seed(0)
    states, configs = {}, {}
    for name_ in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if not (folder / name_ / "config.json").is_file():
            continue
        configs[name_] = json.loads((folder / name_ / "config.json").read_text())
        entry = json.loads((folder / "model_index.json").read_text())[name_]
        model = empty(resolve_class(*entry, component=name_), folder / name_)
        states[name_] = {k: (torch.randn(v.shape, generator=generator) * 0.02).half()
                         for k, v in model.state_dict().items()}
    state = to_original(family, states, configs)
    state["alphas_cumprod"] = torch.linspace(1, 0, 1000)
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(file))
    return file, folder


WORKER = r"""
import json, os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
lib, cls_name, file, folder = sys.argv[1:5]


def status(field):  # VmHWM is this process's own peak (ru_maxrss keeps the parent's across exec)
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024


with open(file, "rb") as f:  # warm the page cache: time the load, not the disk
    while f.read(1 << 26):
        pass
import torch
import transformers
for name in ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer"):  # imports are not the load
    getattr(transformers, name)
if lib == "ours":
    import kernel
    cls = kernel.component(cls_name)
    index = json.load(open(os.path.join(folder, "model_index.json")))
    for entry in index.values():
        if isinstance(entry, list) and entry[0] == "diffusers":
            kernel.component(entry[1])
else:
    import diffusers
    cls = getattr(diffusers, cls_name)
before = status("VmRSS")
t0 = time.perf_counter()
pipe = cls.from_single_file(file, config=folder, torch_dtype=torch.float16)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_mb": status("VmHWM"), "before_mb": before}))
"""


def measure(lib: str, cls_name: str, file: Path, folder: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", WORKER, lib, cls_name, str(file), str(folder)], capture_output=True,
                         text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{lib} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdxl", action="store_true", help="an SDXL-sized file instead of SD 1.5")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    name = "sdxl" if args.sdxl else "sd15"
    file, folder = checkpoint(name)
    size_mb = file.stat().st_size / 2**20
    _, cls_name = FAMILIES[name]
    runs: dict[str, list[dict]] = {"ours": [], "diffusers": []}
    for round_ in range(args.rounds):
        for lib in (("ours", "diffusers") if round_ % 2 == 0 else ("diffusers", "ours")):
            runs[lib].append(measure(lib, cls_name, file, folder))
    med = {lib: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_mb", "before_mb")}
           for lib, rs in runs.items()}
    print(f"{name} single file: {size_mb:.0f} MiB (fp16), {args.rounds} rounds, CPU, page cache warm")
    print(f"{'':<24} {'ours':>10} {'diffusers':>10} {'ratio':>7}")
    for key, unit in (("seconds", "s"), ("peak_mb", "MiB")):
        ours, theirs = med["ours"][key], med["diffusers"][key]
        print(f"{'load ' + key:<24} {ours:>10.2f} {theirs:>10.2f} {ours / theirs:>7.2f}")
    for lib in ("ours", "diffusers"):
        grown = med[lib]["peak_mb"] - med[lib]["before_mb"]
        print(f"{lib}: the load raises the peak RSS by {grown / size_mb:.2f} x the file size "
              f"(whole process, imports included: {med[lib]['peak_mb'] / size_mb:.2f} x)")


if __name__ == "__main__":
    main()
