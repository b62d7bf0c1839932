"""Per-step transformer time and peak memory: kernel's SD3 / Flux / PixArt against Diffusers, same weights.

    python benchmarks/transformer_step.py                 # tiny models (CPU or GPU)
    python benchmarks/transformer_step.py --large         # + reduced-depth SD3/Flux-shaped models at 1024x1024 (GPU)
    python benchmarks/transformer_step.py --json out.json

For each model a Diffusers instance is built from a seed, its state dict is loaded into ours
(``strict=True``), and one denoising step (one forward at the given latent size, batch 2 as with
classifier-free guidance) is timed for both, alternating, after warm-up.  The printed ratio is
ours / Diffusers (below 1 is faster); peak memory is ``torch.cuda.max_memory_allocated`` per
forward on a GPU (not measured on CPU).  Both run under ``torch.inference_mode`` in the same
process, with the same attention backend (PyTorch SDPA).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _flux_ids(rows, cols, text, device):
    ids = torch.zeros(rows, cols, 3, device=device)
    ids[..., 1] = torch.arange(rows, device=device)[:, None]
    ids[..., 2] = torch.arange(cols, device=device)[None, :]
    return ids.reshape(-1, 3), torch.zeros(text, 3, device=device)


def cases(large: bool):
    """``(name, diffusers class, our class, config, input builder(device, dtype))``."""
    import diffusers
    from kernel_flux import FluxTransformer2DModel
    from kernel_pixart import PixArtTransformer2DModel
    from kernel_sd3 import SD3Transformer2DModel

    def sd3_inputs(batch, side, channels, text, joint, pooled):
        def build(device, dtype):
            g = torch.Generator().manual_seed(0)
            return dict(hidden_states=torch.randn(batch, channels, side, side, generator=g).to(device, dtype),
                        encoder_hidden_states=torch.randn(batch, text, joint, generator=g).to(device, dtype),
                        pooled_projections=torch.randn(batch, pooled, generator=g).to(device, dtype),
                        timestep=torch.full((batch,), 500.0, device=device))
        return build

    def flux_inputs(batch, side, channels, text, joint, pooled, guidance):
        def build(device, dtype):
            g = torch.Generator().manual_seed(0)
            img_ids, txt_ids = _flux_ids(side // 2, side // 2, text, device)
            out = dict(hidden_states=torch.randn(batch, (side // 2) ** 2, channels, generator=g).to(device, dtype),
                       encoder_hidden_states=torch.randn(batch, text, joint, generator=g).to(device, dtype),
                       pooled_projections=torch.randn(batch, pooled, generator=g).to(device, dtype),
                       timestep=torch.full((batch,), 0.5, device=device, dtype=dtype), img_ids=img_ids,
                       txt_ids=txt_ids)
            if guidance:
                out["guidance"] = torch.full((batch,), 3.5, device=device, dtype=torch.float32)
            return out
        return build

    def pixart_inputs(batch, side, text, caption):
        def build(device, dtype):
            g = torch.Generator().manual_seed(0)
            return dict(hidden_states=torch.randn(batch, 4, side, side, generator=g).to(device, dtype),
                        encoder_hidden_states=torch.randn(batch, text, caption, generator=g).to(device, dtype),
                        timestep=torch.full((batch,), 500, device=device),
                        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                        encoder_attention_mask=torch.ones(batch, text, device=device))
        return build

    tiny_sd3 = dict(sample_size=32, patch_size=2, in_channels=16, num_layers=4, attention_head_dim=16,
                    num_attention_heads=4, caption_projection_dim=64, joint_attention_dim=64,
                    pooled_projection_dim=64, out_channels=16, pos_embed_max_size=32)
    tiny_flux = dict(in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=16,
                     num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=32,
                     axes_dims_rope=[4, 6, 6], guidance_embeds=True)
    tiny_pixart = dict(sample_size=32, num_layers=4, attention_head_dim=16, num_attention_heads=4,
                       caption_channels=64, cross_attention_dim=64, in_channels=4, out_channels=8)
    out = [
        ("sd3-tiny 32x32 latents", diffusers.SD3Transformer2DModel, SD3Transformer2DModel, tiny_sd3,
         sd3_inputs(2, 32, 16, 24, 64, 64)),
        ("sd3.5-tiny 32x32 latents", diffusers.SD3Transformer2DModel, SD3Transformer2DModel,
         dict(tiny_sd3, dual_attention_layers=(0, 1), qk_norm="rms_norm"), sd3_inputs(2, 32, 16, 24, 64, 64)),
        ("flux-dev-tiny 32x32 latents", diffusers.FluxTransformer2DModel, FluxTransformer2DModel, tiny_flux,
         flux_inputs(2, 32, 64, 24, 64, 32, True)),
        ("pixart-tiny 32x32 latents", diffusers.PixArtTransformer2DModel, PixArtTransformer2DModel, tiny_pixart,
         pixart_inputs(2, 32, 24, 64)),
    ]
    if large:
        # Full width, reduced depth: per-block cost of the released models at 1024x1024 (128x128 latents).
        sd3 = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=4, attention_head_dim=64,
                   num_attention_heads=24, caption_projection_dim=1536, joint_attention_dim=4096,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192,
                   dual_attention_layers=(0, 1), qk_norm="rms_norm")
        flux = dict(in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                    axes_dims_rope=[16, 56, 56], guidance_embeds=True)
        out += [
            ("sd3.5-shaped 4 layers 1024px", diffusers.SD3Transformer2DModel, SD3Transformer2DModel, sd3,
             sd3_inputs(2, 128, 16, 333, 4096, 2048)),
            ("flux-dev-shaped 2+4 layers 1024px", diffusers.FluxTransformer2DModel, FluxTransformer2DModel, flux,
             flux_inputs(1, 128, 64, 512, 4096, 768, True)),
        ]
    return out


def measure(model, inputs, device, repeats):
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    for _ in range(repeats):
        model(**inputs, return_dict=False)
    _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else None
    return seconds, peak


def run(large: bool, repeats: int, rounds: int, dtype_name: str):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, dtype_name) if device.type == "cuda" else torch.float32
    results = []
    for name, theirs_cls, ours_cls, config, build in cases(large and device.type == "cuda"):
        torch.manual_seed(0)
        theirs = theirs_cls(**config).to(device, dtype).eval()
        ours = ours_cls(**config).to(device, dtype).eval()
        ours.load_state_dict(theirs.state_dict(), strict=True)
        inputs = build(device, dtype)
        times = {"ours": [], "diffusers": []}
        peaks = {"ours": 0, "diffusers": 0}
        with torch.inference_mode():
            for model in (ours, theirs):  # warm-up
                measure(model, inputs, device, 2)
            for _ in range(rounds):
                for key, model in (("ours", ours), ("diffusers", theirs)):
                    seconds, peak = measure(model, inputs, device, repeats)
                    times[key].append(seconds)
                    peaks[key] = max(peaks[key], peak or 0)
        ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["diffusers"])
        row = {"model": name, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "dtype": str(dtype).replace("torch.", ""), "ours_ms": round(ours_s * 1e3, 3),
               "diffusers_ms": round(theirs_s * 1e3, 3), "time_ratio": round(ours_s / theirs_s, 3)}
        if device.type == "cuda":
            row.update(ours_peak_mib=round(peaks["ours"] / 2**20, 1), diffusers_peak_mib=round(peaks["diffusers"] / 2**20, 1),
                       memory_ratio=round(peaks["ours"] / max(peaks["diffusers"], 1), 3))
        results.append(row)
        print(json.dumps(row), flush=True)
        del theirs, ours
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="add the 1024px SD3/Flux-shaped models (GPU only)")
    parser.add_argument("--repeats", type=int, default=5, help="forwards per timing")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (median reported)")
    parser.add_argument("--dtype", default="bfloat16", help="GPU dtype (CPU always float32)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = run(args.large, args.repeats, args.rounds, args.dtype)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
