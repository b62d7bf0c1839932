"""Per-step time of an SD 1.5-shaped ControlNet pipeline on the CPU: ours against Diffusers, same weights.

    python benchmarks/controlnet_step.py                       # 256 px (32x32 latents), 4 steps, guidance
    python benchmarks/controlnet_step.py --size 128 --rounds 5 --threads 2 --json out.json

The UNet and the ControlNet have SD 1.5's shapes (860 M + 361 M parameters, cross-attention width 768) and
seeded random weights, built once with Diffusers (the ControlNet with ``ControlNetModel.from_unet``, its zero
convolutions randomised so the residuals are real); ours are built on the meta device and take the very same
tensors (``load_state_dict(assign=True)``: shared storage, no second copy).  The text encoder (one CLIP layer of
width 768) and the VAE (4 tiny stages, 8x) are small: a step does not touch them.

A step is what the pipeline's loop does between two step-end callbacks: the ControlNet and the UNet on the
classifier-free-guidance batch (2 rows), guidance, the DDIM update.  Each call runs ``--steps`` steps
(``output_type="latent"``); the intervals between consecutive callbacks are the step times.  Ours and Diffusers
alternate, ``--rounds`` calls each after a warm-up call; the table gives the median step (min-max) and the ratio
ours / Diffusers (below 1 is faster), and the largest difference between the two libraries' final latents.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _weights  # noqa: E402

TEXT = dict(_weights.TINY_CLIP, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
            num_hidden_layers=1, projection_dim=768)
VAE_8X = dict(block_out_channels=(32, 32, 32, 32), in_channels=3, out_channels=3, layers_per_block=1,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              latent_channels=4, norm_num_groups=32)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                 set_alpha_to_one=False, steps_offset=1)
ZERO_INIT = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")


def _twin(module: torch.nn.Module) -> torch.nn.Module:
    """Our class of ``module``'s name, built on the meta device, holding ``module``'s tensors (shared)."""
    import kernel

    with torch.device("meta"):
        model = kernel.component(type(module).__name__).from_config(dict(module.config))
    result = model.load_state_dict(module.state_dict(), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval().requires_grad_(False)


def pipelines(tokenizer_dir: Path):
    """(ours, Diffusers') SD 1.5-shaped ControlNet pipelines over the same weights."""
    import diffusers
    import kernel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**_weights.SD15_UNET).eval().requires_grad_(False)
    controlnet = diffusers.ControlNetModel.from_unet(unet).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            if name.startswith(ZERO_INIT):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    vae = diffusers.AutoencoderKL(**VAE_8X).eval().requires_grad_(False)
    common = dict(text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT)).eval(),
                  tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir)), safety_checker=None,
                  feature_extractor=None, requires_safety_checker=False)
    theirs = diffusers.StableDiffusionControlNetPipeline(
        unet=unet, controlnet=controlnet, vae=vae, scheduler=diffusers.DDIMScheduler(**SCHEDULER), **common)
    ours = kernel.component("StableDiffusionControlNetPipeline")(
        unet=_twin(unet), controlnet=_twin(controlnet), vae=_twin(vae),
        scheduler=kernel.component("DDIMScheduler")(**SCHEDULER), **common)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    return ours, theirs


def step_times(pipe, size: int, steps: int, control) -> tuple[list[float], torch.Tensor]:
    """The step times of one call (intervals between step-end callbacks) and its final latents."""
    marks: list[float] = []

    def mark(p, i, t, tensors):
        marks.append(time.perf_counter())
        return {}

    with torch.inference_mode():
        latents = pipe("a photo of an astronaut riding a horse", image=control, height=size, width=size,
                       num_inference_steps=steps, guidance_scale=7.5, output_type="latent",
                       generator=torch.Generator().manual_seed(0), callback_on_step_end=mark).images
    return [b - a for a, b in zip(marks, marks[1:])], latents


def run(size: int, steps: int, rounds: int) -> dict:
    from PIL import Image

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="kbench-tok-") as tok:
        _weights.write_tokenizer(Path(tok))
        t0 = time.perf_counter()
        ours, theirs = pipelines(Path(tok))
        built = time.perf_counter() - t0
    control = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    latents = {}
    for name, pipe in (("ours", ours), ("diffusers", theirs)):  # warm-up
        step_times(pipe, size, 2, control)
    times = {"ours": [], "diffusers": []}
    for r in range(rounds):
        order = (("ours", ours), ("diffusers", theirs)) if r % 2 == 0 else (("diffusers", theirs), ("ours", ours))
        for name, pipe in order:
            intervals, latents[name] = step_times(pipe, size, steps, control)
            times[name].extend(intervals)
    ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    return {"benchmark": f"SD1.5-shaped ControlNet pipeline step, {size}px, batch 2 (guidance), fp32 CPU",
            "threads": torch.get_num_threads(), "build_s": round(built, 1),
            "ours_s": round(ours_s, 4), "ours_range": [round(min(times["ours"]), 4), round(max(times["ours"]), 4)],
            "diffusers_s": round(theirs_s, 4),
            "diffusers_range": [round(min(times["diffusers"]), 4), round(max(times["diffusers"]), 4)],
            "ratio": round(ours_s / theirs_s, 3), "samples": len(times["ours"]),
            "max_latent_diff": float((latents["ours"] - latents["diffusers"]).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (multiple of 64)")
    parser.add_argument("--steps", type=int, default=4, help="steps per call (steps - 1 intervals are timed)")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per library, alternating")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    if args.size % 64 or args.steps < 2 or args.rounds < 1:
        parser.error("--size must be a multiple of 64, --steps >= 2, --rounds >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    row = run(args.size, args.steps, args.rounds)
    print(f"{row['benchmark']} ({row['threads']} threads, {row['samples']} steps each)")
    print(f"  ours       {row['ours_s']:.3f} s/step ({row['ours_range'][0]:.3f}-{row['ours_range'][1]:.3f})")
    print(f"  Diffusers  {row['diffusers_s']:.3f} s/step ({row['diffusers_range'][0]:.3f}-{row['diffusers_range'][1]:.3f})")
    print(f"  ratio      {row['ratio']:.3f}  (goal <= 0.95); max|latents ours - Diffusers| {row['max_latent_diff']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
