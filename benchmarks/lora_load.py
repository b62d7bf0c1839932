"""LoRA load time, ours / Diffusers: an SDXL-shaped rank-64 LoRA into an SDXL-shaped pipeline, on the CPU.

    python benchmarks/lora_load.py                      # peft layout, rank 64, 3 rounds
    python benchmarks/lora_load.py --layout kohya --rounds 5 --text-encoders

The LoRA (seeded random weights, bf16) targets every attention projection of the SDXL UNet (and,
with ``--text-encoders``, of CLIP-L and CLIP-bigG), as Diffusers' SDXL LoRA training script does; it
is written once into ``.bench-cache/``.  Each measurement runs in a fresh process that builds the
models without initialising them (meta device, then empty bf16 storage: the values do not matter
for loading), imports peft, warms the page cache with the file, and times
``pipe.load_lora_weights(file)`` (wall clock and the process's CPU time: on a busy machine the CPU time is the
steadier one), the libraries alternating which goes first; the ratio of each round's pair is reported too.
Nothing is downloaded.
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
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu")
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              max_position_embeddings=77, vocab_size=49408, projection_dim=1280, hidden_act="gelu")
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _empty(build, dtype):
    """A module built on the meta device, then given uninitialised CPU storage in ``dtype``."""
    import torch

    with torch.device("meta"):
        module = build()
    return module.to(dtype).to_empty(device="cpu").eval()


def _models(lib: str, text_encoders: bool):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if lib == "ours":
        import kernel

        unet_cls = kernel.component("UNet2DConditionModel")
    else:
        from diffusers import UNet2DConditionModel as unet_cls
    out = {"unet": _empty(lambda: unet_cls(**UNET_XL), torch.bfloat16)}
    if text_encoders:
        out["text_encoder"] = _empty(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L)), torch.bfloat16)
        out["text_encoder_2"] = _empty(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)), torch.bfloat16)
    return out


def lora_file(rank: int, layout: str, text_encoders: bool) -> Path:
    """Write (once) the seeded random LoRA: peft layout (``unet.<layer>.lora_A.weight``) or kohya-ss."""
    suffix = "-te" if text_encoders else ""
    path = _weights.CACHE / f"lora-sdxl-r{rank}-{layout}{suffix}.safetensors"
    if path.is_file():
        return path
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = {}
    for component, model in _models("diffusers", text_encoders).items():
        targets = UNET_TARGETS if component == "unet" else TEXT_TARGETS
        kohya_prefix = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[component]
        for name, module in model.named_modules():
            if not name.endswith(targets) or not isinstance(module, torch.nn.Linear):
                continue
            down = (torch.randn(rank, module.in_features) / module.in_features**0.5).to(torch.bfloat16)
            up = (torch.randn(module.out_features, rank) * 0.01).to(torch.bfloat16)
            if layout == "kohya":
                flat = (name if component == "unet" or name.startswith("text_model.") else f"text_model.{name}").replace(".", "_")
                state[f"{kohya_prefix}{flat}.lora_down.weight"] = down
                state[f"{kohya_prefix}{flat}.lora_up.weight"] = up
                state[f"{kohya_prefix}{flat}.alpha"] = torch.tensor(float(rank) / 2)
            else:
                state[f"{component}.{name}.lora_A.weight"] = down
                state[f"{component}.{name}.lora_B.weight"] = up
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def run_worker(lib: str, file: str, text_encoders: bool) -> dict:
    import torch

    import peft  # noqa: F401 - Diffusers imports it with itself; ours on the first LoRA: time the load alone

    Path(file).read_bytes()  # page cache warm for both libraries
    parts = _models(lib, text_encoders)
    blank = dict(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None)
    if lib == "ours":
        import kernel

        pipe = kernel.component("StableDiffusionXLPipeline")(**{**blank, **parts},
                                                             scheduler=kernel.component("EulerDiscreteScheduler")())
    else:
        import transformers.integrations.peft as integration
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

        # transformers asks for a newer peft than the one its integration needs here (see the lora tests)
        integration.check_peft_version = lambda *a, **k: None
        pipe = StableDiffusionXLPipeline(**{**blank, **parts}, scheduler=EulerDiscreteScheduler())
    t0, c0 = time.perf_counter(), time.process_time()
    pipe.load_lora_weights(file, adapter_name="bench")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    layers = sum(1 for m in pipe.unet.modules() if type(m).__name__ == "Linear" and hasattr(m, "lora_A"))
    return {"seconds": seconds, "cpu_seconds": cpu, "unet_lora_layers": layers}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--layout", choices=("peft", "kohya"), default="peft")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--text-encoders", action="store_true", help="also CLIP-L and CLIP-bigG LoRA layers")
    p.add_argument("--worker", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.file, args.text_encoders)))
        return
    file = lora_file(args.rank, args.layout, args.text_encoders)
    print(f"LoRA: {file.name} ({file.stat().st_size / 2**20:.0f} MiB, rank {args.rank}, {args.layout} layout)")
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    cpu: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for r in range(args.rounds):
        for lib in (("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours")):
            cmd = [sys.executable, __file__, "--worker", lib, "--file", str(file)]
            if args.text_encoders:
                cmd.append("--text-encoders")
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{lib} failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            times[lib].append(result["seconds"])
            cpu[lib].append(result["cpu_seconds"])
            print(f"  round {r + 1} {lib:<9} {result['seconds']:.3f} s wall, {result['cpu_seconds']:.3f} s CPU  "
                  f"({result['unet_lora_layers']} UNet LoRA layers)", flush=True)
    for what, table in (("wall", times), ("CPU", cpu)):
        ours, theirs = statistics.median(table["ours"]), statistics.median(table["diffusers"])
        pairs = [o / d for o, d in zip(table["ours"], table["diffusers"])]
        print(f"load_lora_weights {what:<4}  ours {ours:.3f} s ({min(table['ours']):.3f}-{max(table['ours']):.3f})  "
              f"diffusers {theirs:.3f} s ({min(table['diffusers']):.3f}-{max(table['diffusers']):.3f})  "
              f"ratio of medians {ours / theirs:.2f}; per round {', '.join(f'{q:.2f}' for q in pairs)} "
              f"(median {statistics.median(pairs):.2f})")


if __name__ == "__main__":
    main()
