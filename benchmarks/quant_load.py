"""Quantized load on the CPU, ours / Diffusers: an SDXL-shaped UNet loaded with bitsandbytes int8 and nf4.

    python benchmarks/quant_load.py                 # SDXL-shaped UNet (2.6 B parameters, 5.1 GB in fp16)
    python benchmarks/quant_load.py --small         # the same shape at half the width (0.65 B parameters)
    python benchmarks/quant_load.py --modes nf4 --rounds 3

The folder (seeded random fp16 weights, Diffusers' layout) is written once into ``.bench-cache/``.
Each measurement runs in a fresh process that warms the page cache with the file, then times
``UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.float16,
quantization_config=BitsAndBytesConfig(...))`` and reports its peak RSS; the libraries alternate
which goes first. Diffusers' bitsandbytes quantizers refuse to start without a GPU although
bitsandbytes runs on the CPU, so its child process lifts that one check (as the tests do).
Both libraries call the same bitsandbytes quantization, so the outputs are identical (tested in
``plugins/quant-bitsandbytes``); this measures the loading around it.
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

UNET_XL = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
               block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
               transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
               addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
SMALL = dict(UNET_XL, block_out_channels=(160, 320, 640), cross_attention_dim=1024, attention_head_dim=(5, 10, 20),
             projection_class_embeddings_input_dim=1792, addition_time_embed_dim=128)
MODES = {"int8": dict(load_in_8bit=True), "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4")}


def build(folder: Path, config: dict) -> Path:
    """Seeded random fp16 weights in Diffusers' layout (written by our model class: same files)."""
    if (folder / "config.json").is_file():
        return folder
    import torch

    import kernel

    with torch.device("meta"):
        model = kernel.component("UNet2DConditionModel")(**config)
    model = model.to(torch.float16).to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    model.save_pretrained(folder)
    return folder


def child(lib: str, folder: str, mode: str) -> None:
    import resource

    import torch

    with open(Path(folder) / "diffusion_pytorch_model.safetensors", "rb") as f:  # warm the page cache
        while f.read(1 << 26):
            pass
    if lib == "ours":
        import kernel
        from kernel_quant_bitsandbytes import BitsAndBytesConfig

        cls = kernel.component("UNet2DConditionModel")
    else:
        import diffusers
        from diffusers.quantizers.bitsandbytes import bnb_quantizer as bq

        for c in (bq.BnB4BitDiffusersQuantizer, bq.BnB8BitDiffusersQuantizer):
            c.validate_environment = lambda self, *a, **k: None
            c.update_device_map = lambda self, device_map: {"": "cpu"} if device_map is None else device_map
        cls, BitsAndBytesConfig = diffusers.UNet2DConditionModel, diffusers.BitsAndBytesConfig
    start = time.perf_counter()
    model = cls.from_pretrained(folder, torch_dtype=torch.float16, quantization_config=BitsAndBytesConfig(**MODES[mode]))
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "rss": rss, "footprint": model.get_memory_footprint()}))


def measure(lib: str, folder: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", lib, str(folder), mode], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{lib} {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="half-width SDXL-shaped UNet")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    folder = build(_weights.CACHE / ("sdxl-unet-fp16-small" if args.small else "sdxl-unet-fp16"),
                   SMALL if args.small else UNET_XL)
    size = (folder / "diffusion_pytorch_model.safetensors").stat().st_size
    print(f"{'SDXL-shaped (half width)' if args.small else 'SDXL-shaped'} UNet, {size / 2**30:.2f} GiB of fp16 weights")
    print("| mode | load ours | load Diffusers | ratio | peak RSS ours | peak RSS Diffusers | ratio | footprint |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode in args.modes:
        runs: dict[str, list[dict]] = {"ours": [], "diffusers": []}
        for r in range(args.rounds):
            for lib in (("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours")):
                runs[lib].append(measure(lib, folder, mode))
        t = {lib: statistics.median(x["seconds"] for x in v) for lib, v in runs.items()}
        m = {lib: statistics.median(x["rss"] for x in v) for lib, v in runs.items()}
        print(f"| {mode} | {t['ours']:.1f} s | {t['diffusers']:.1f} s | {t['ours'] / t['diffusers']:.2f} | "
              f"{m['ours'] / 2**20:.0f} MB | {m['diffusers'] / 2**20:.0f} MB | {m['ours'] / m['diffusers']:.2f} | "
              f"{runs['ours'][0]['footprint'] / 2**20:.0f} MB (Diffusers {runs['diffusers'][0]['footprint'] / 2**20:.0f}) |")


if __name__ == "__main__":
    main()
