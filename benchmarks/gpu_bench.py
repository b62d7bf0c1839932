"""GPU benchmarks against Diffusers, same weights, same run, one table (issue 8).

    python benchmarks/gpu_bench.py                          # on an NVIDIA card (run by benchmarks/gpu.sh)
    python benchmarks/gpu_bench.py --device cpu --tiny      # dry run of every section with tiny shapes
    python benchmarks/gpu_bench.py --only unet,flux --budget-s 300
    python benchmarks/gpu_bench.py --only video,two-stage          # the video and two-stage rows alone

Sections (``--only`` takes their names):

* ``unet``: SDXL-shaped UNet (2.6 B parameters), 1024x1024 (128x128 latents), batch 2 as with
  guidance, bf16, eager: step time, achieved TFLOP/s and its fraction of the card's bf16 peak;
* ``flux``: Flux-dev-shaped transformer at full width and reduced depth (2 double + 4 single
  blocks), 1024x1024, bf16, eager;
* ``memory``: the same Flux-shaped transformer resident in bf16, with fp8 layerwise casting, with
  block-level group offload (weights on the CPU, streamed on a side stream), as GGUF Q4_0 (a
  city96-style file written in the run, when the gguf package imports) and as bitsandbytes nf4
  (when bitsandbytes imports), ours against Diffusers doing the same: step time and peak memory;
* ``compile``: the SDXL UNet under ``torch.compile(fullgraph=True)`` and under
  ``compile_repeated_blocks(fullgraph=True)`` (regional), each in a fresh process with an empty
  Inductor cache: cold compile time and compiled step time;
* ``pipelines``: 50-step SD 1.5-shaped pipeline at 512x512 (also with an SD 1.5-shaped ControlNet) and 30-step
  SDXL-shaped pipeline at 1024x1024, fp16, end to end (prompt to ``np`` image); then the sync check: a hand-written
  30-step SDXL loop (UNet, guidance, Euler) under ``torch.cuda.set_sync_debug_mode("error")``,
  and the pipelines' own loops with the mode switched on from the first step-end callback;
* ``load``: the SDXL-sized fp16 pipeline (written once to a temporary folder, so the files
  sit in the page cache) loaded with ``device_map`` set to the GPU;
* ``explain``: graph breaks of the UNet and the Flux transformer (``torch._dynamo.explain``);
* ``video`` (issue 17): CogVideoX-2b's transformer at full config (30 layers, 30 heads x 64, text 4096), 13 latent
  frames of 60x90 (17550 video + 226 text tokens), batch 2, bf16 (cut to 4 layers when under 150 s of the
  budget is left); CogVideoX-2b's VAE with ``enable_tiling()`` decoding 13 latent frames into 49 frames of
  480x720, bf16; an SD 1.5-shaped AnimateDiff ``UNetMotionModel`` (v1-5-2 adapter shape), 16 frames of 512x512,
  batch 2, fp16: step time, peak CUDA memory, max difference;
* ``two-stage`` (issue 18): the released Stable Cascade lite UNets, stage C (1.0 B, 24x24 latents) and stage B
  (0.7 B, 256x256 latents, 24x24 effnet), 1024 px, batch 2, bf16: step time, peak CUDA memory, max difference.

Weights are seeded random, built directly on the device; each Diffusers model gets our state dict
(``strict=True``), so both compute the same function (the video and two-stage models first get seeded
noise in place of every all-zero parameter, so the max difference also covers zero-initialised paths).
Ratios are ours / Diffusers (below 1 is faster).  Sections that would pass ``--budget-s`` are skipped and
say so.  Without Diffusers the Diffusers columns stay empty and a note says why.  Results go to
``$OUT/gpu_bench.json`` when ``$OUT`` is set (or ``--json``), rewritten after every section.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

START = time.perf_counter()  # the --budget-s clock (before the torch import, which it includes)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", category=FutureWarning)  # Diffusers' torch_dtype -> dtype rename

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _weights  # noqa: E402

SECTIONS = ("unet", "flux", "memory", "pipelines", "load", "compile", "explain", "video", "two-stage")

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets; first match wins.
PEAK_BF16 = (("H200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4), ("GH200", 989.4),
             ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("A10", 125.0))

# ----------------------------------------------------------------------------- shapes

_CLIP_IDS = dict(bos_token_id=84, eos_token_id=85, pad_token_id=85)  # write_tokenizer's special tokens
_SC_ATTN = ["SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"]  # Stable Cascade block types
_SC_NO_ATTN = ["SDCascadeResBlock", "SDCascadeTimestepBlock"]

FULL = dict(
    unet_xl=dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
    vae_xl=dict(_weights.SD15_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
    clip_l=dict(_weights.SD15_CLIP, **_CLIP_IDS),
    clip_g=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                max_position_embeddings=77, vocab_size=49408, projection_dim=1280, hidden_act="gelu", **_CLIP_IDS),
    unet_15=dict(_weights.SD15_UNET), vae_15=dict(_weights.SD15_VAE), clip_15=dict(_weights.SD15_CLIP, **_CLIP_IDS),
    flux=dict(in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=128, num_attention_heads=24,
              joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=[16, 56, 56], guidance_embeds=True),
    latent=128, flux_latent=128, flux_text=512, sd15=(512, 50), xl=(1024, 30), sync_steps=30,
    repeats=5, rounds=3, pipe_rounds=2, load_rounds=2,
    # video (issue 17): THUDM/CogVideoX-2b's transformer and VAE configs, an SD 1.5-shaped AnimateDiff UNet
    # (the v1-5-2 adapter's shape: motion mid block, 32 positions); cut to cog_short_depth layers below cog_full_s.
    cog=dict(num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
             text_embed_dim=4096, num_layers=30, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
             temporal_compression_ratio=4, max_text_seq_length=226),
    cog_latent=(13, 60, 90), cog_full_s=150, cog_short_depth=4,
    cog_vae=dict(block_out_channels=(128, 256, 256, 512), latent_channels=16, layers_per_block=3, norm_num_groups=32,
                 temporal_compression_ratio=4, sample_height=480, sample_width=720),
    cog_tiles={}, cog_vae_latent=(13, 60, 90), cog_vae_s=60, vae_rounds=2,
    motion=dict(sample_size=64, cross_attention_dim=768, num_attention_heads=8, motion_num_attention_heads=8,
                motion_max_seq_length=32, use_motion_mid_block=True),
    motion_latent=(16, 64), video_repeats=2, video_rounds=3,
    # two-stage (issue 18): the released Stable Cascade lite UNets (stage C 1.0 B, stage B 0.7 B), 1024 px.
    stage_c=dict(in_channels=16, out_channels=16, timestep_ratio_embedding_dim=64, patch_size=1, conditioning_dim=1536,
                 block_out_channels=[1536, 1536], num_attention_heads=[24, 24], down_num_layers_per_block=[4, 12],
                 up_num_layers_per_block=[12, 4], down_blocks_repeat_mappers=[1, 1], up_blocks_repeat_mappers=[1, 1],
                 block_types_per_layer=[_SC_ATTN, _SC_ATTN], clip_text_in_channels=1280,
                 clip_text_pooled_in_channels=1280, clip_image_in_channels=768, clip_seq=4, kernel_size=3,
                 dropout=[0.1, 0.1], self_attn=True, timestep_conditioning_type=["sca", "crp"], switch_level=[False]),
    stage_b=dict(in_channels=4, out_channels=4, timestep_ratio_embedding_dim=64, patch_size=2, conditioning_dim=1280,
                 block_out_channels=[320, 576, 1152, 1152], num_attention_heads=[0, 9, 18, 18],
                 down_num_layers_per_block=[2, 4, 14, 4], up_num_layers_per_block=[4, 14, 4, 2],
                 down_blocks_repeat_mappers=[1, 1, 1, 1], up_blocks_repeat_mappers=[2, 2, 2, 2],
                 block_types_per_layer=[_SC_NO_ATTN, _SC_NO_ATTN, _SC_ATTN, _SC_ATTN],
                 clip_text_pooled_in_channels=1280, clip_seq=4, effnet_in_channels=16, pixel_mapper_in_channels=3,
                 kernel_size=3, dropout=[0, 0, 0.1, 0.1], self_attn=True, timestep_conditioning_type=["sca"]),
    cascade_latent=(24, 256), cascade_px=1024,
)
TINY = dict(
    unet_xl=dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(32, 64),
                 attention_head_dim=(2, 4), cross_attention_dim=64, transformer_layers_per_block=(1, 2),
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=80, norm_num_groups=32),
    vae_xl=dict(_weights.TINY_VAE, force_upcast=True), clip_l=dict(_weights.TINY_CLIP),
    clip_g=dict(_weights.TINY_CLIP), unet_15=dict(_weights.TINY_UNET), vae_15=dict(_weights.TINY_VAE),
    clip_15=dict(_weights.TINY_CLIP),
    flux=dict(in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=16, num_attention_heads=4,
              joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6], guidance_embeds=True),
    latent=16, flux_latent=16, flux_text=24, sd15=(64, 3), xl=(64, 3), sync_steps=30,
    repeats=2, rounds=2, pipe_rounds=1, load_rounds=1,
    cog=dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
             text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
             temporal_compression_ratio=4, max_text_seq_length=7),
    cog_latent=(3, 8, 8), cog_full_s=0, cog_short_depth=1,
    cog_vae=dict(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
                 temporal_compression_ratio=4, sample_height=64, sample_width=64),
    cog_tiles=dict(tile_sample_min_height=32, tile_sample_min_width=32), cog_vae_latent=(5, 8, 8), cog_vae_s=0,
    vae_rounds=1,
    motion=dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                cross_attention_dim=32, num_attention_heads=2, motion_num_attention_heads=2, motion_max_seq_length=8,
                down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
                up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion")),
    motion_latent=(4, 8), video_repeats=1, video_rounds=2,
    stage_c=dict(conditioning_dim=128, block_out_channels=(128, 128), num_attention_heads=(2, 2),
                 down_num_layers_per_block=(1, 1), up_num_layers_per_block=(1, 1), switch_level=(False,),
                 clip_image_in_channels=768, clip_text_in_channels=32, clip_text_pooled_in_channels=32,
                 dropout=(0.1, 0.1)),
    stage_b=dict(in_channels=4, out_channels=4, conditioning_dim=128, block_out_channels=(16, 32, 32, 32),
                 num_attention_heads=(-1, -1, 1, 2), down_num_layers_per_block=(1, 1, 1, 1),
                 up_num_layers_per_block=(1, 1, 1, 1), down_blocks_repeat_mappers=(1, 1, 1, 1),
                 up_blocks_repeat_mappers=(3, 3, 2, 2),
                 block_types_per_layer=(_SC_NO_ATTN, _SC_NO_ATTN, _SC_ATTN, _SC_ATTN),
                 clip_text_pooled_in_channels=32, clip_seq=4, effnet_in_channels=16, pixel_mapper_in_channels=3,
                 dropout=(0.1, 0.1, 0.1, 0.1), self_attn=True, timestep_conditioning_type=("sca",), kernel_size=3,
                 patch_size=1),
    cascade_latent=(8, 16), cascade_px=64,
)

# ----------------------------------------------------------------------------- libraries


def diffusers_or_none():
    """Diffusers when it imports, else ``None`` (the reason goes into the notes)."""
    try:
        import diffusers
    except Exception as exc:  # missing, or a dependency too old: the Diffusers columns stay empty
        return None, f"Diffusers not importable ({type(exc).__name__}: {exc}); Diffusers columns skipped"
    diffusers.utils.logging.set_verbosity_error()  # its per-cast float32-modules warning
    diffusers.utils.logging.disable_progress_bar()
    return diffusers, None


def ours(name: str):
    import kernel

    return kernel.component(name)


_MISSING: dict[str, str] = {}


def theirs(name: str):
    """Diffusers' class ``name``, or ``None`` (Diffusers absent, or its lazy import of it failed)."""
    diffusers, _ = diffusers_or_none()
    if diffusers is None or name in _MISSING:
        return None
    try:
        return getattr(diffusers, name)
    except Exception as exc:  # e.g. a dependency of its pipelines module (requests) is missing
        _MISSING[name] = f"diffusers.{name} unavailable ({type(exc).__name__}: {str(exc)[:200]})"
        print(f"# {_MISSING[name]}; its column stays empty", flush=True)
        return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build(cls, config: dict, device, dtype, seed: int = 0):
    """A seeded random model made on ``device`` (no CPU detour), cast to ``dtype``, inference only."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls(**config)
    return model.to(dtype).eval().requires_grad_(False)


def twin(cls, config: dict, source, device, dtype):
    """``cls`` (Diffusers' class) holding exactly ``source``'s weights; ``None`` without Diffusers."""
    if cls is None:
        return None
    model = build(cls, config, device, dtype, seed=1)
    model.load_state_dict(source.state_dict(), strict=True)
    return model


def clip_encoder(config: dict, device, dtype, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    torch.manual_seed(2)
    with torch.device(device):
        model = cls(CLIPTextConfig(**config))
    return model.to(dtype).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- inputs


def unet_inputs(cfg: dict, device, dtype, batch: int = 2) -> dict:
    unet = cfg["unet_xl"]
    g = torch.Generator().manual_seed(0)
    side, ctx = cfg["latent"], unet["cross_attention_dim"]
    pooled = unet["projection_class_embeddings_input_dim"] - 6 * unet["addition_time_embed_dim"]
    size = side * 8
    return dict(sample=torch.randn(batch, 4, side, side, generator=g).to(device, dtype),
                timestep=torch.full((batch,), 500.0, device=device),
                encoder_hidden_states=torch.randn(batch, 77, ctx, generator=g).to(device, dtype),
                added_cond_kwargs=dict(text_embeds=torch.randn(batch, pooled, generator=g).to(device, dtype),
                                       time_ids=torch.tensor([[size, size, 0, 0, size, size]] * batch,
                                                             device=device, dtype=dtype)))


def flux_inputs(cfg: dict, device, dtype) -> dict:
    from transformer_step import _flux_ids

    flux, side, text = cfg["flux"], cfg["flux_latent"], cfg["flux_text"]
    g = torch.Generator().manual_seed(0)
    img_ids, txt_ids = _flux_ids(side // 2, side // 2, text, device)
    return dict(hidden_states=torch.randn(1, (side // 2) ** 2, flux["in_channels"], generator=g).to(device, dtype),
                encoder_hidden_states=torch.randn(1, text, flux["joint_attention_dim"], generator=g).to(device, dtype),
                pooled_projections=torch.randn(1, flux["pooled_projection_dim"], generator=g).to(device, dtype),
                timestep=torch.full((1,), 0.5, device=device, dtype=dtype), img_ids=img_ids, txt_ids=txt_ids,
                guidance=torch.full((1,), 3.5, device=device, dtype=torch.float32))


# ----------------------------------------------------------------------------- timing


def time_calls(fn, device, repeats: int) -> float:
    """Seconds per call of ``fn`` over ``repeats`` back-to-back calls (one sync at each end)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def alternate(fns: dict, device, repeats: int, rounds: int, warmup: int = 1) -> dict:
    """Per-round seconds per call for each named function, ours and theirs interleaved."""
    fns = {k: f for k, f in fns.items() if f is not None}
    for f in fns.values():
        for _ in range(warmup):
            f()
    out = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            out[k].append(time_calls(f, device, repeats))
    return out


def forward_flops(model, inputs: dict) -> float:
    """FLOPs of one forward (matmuls, convolutions, attention), counted by PyTorch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**inputs, return_dict=False)
    return float(counter.get_total_flops())


def max_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


# ----------------------------------------------------------------------------- report


class Report:
    def __init__(self, device, budget_s: float, json_path: str | None) -> None:
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.device, self.budget_s, self.json_path = device, budget_s, json_path
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        self.meta = {"device": name, "torch": torch.__version__, "python": sys.version.split()[0]}
        with contextlib.suppress(Exception):
            import transformers

            transformers.utils.logging.disable_progress_bar()
            transformers.utils.logging.set_verbosity_error()
        diffusers, why = diffusers_or_none()
        self.meta["diffusers"] = diffusers.__version__ if diffusers else None
        if why:
            self.note(why)
        peak = os.environ.get("KERNEL_BENCH_PEAK_TFLOPS")
        self.peak = float(peak) if peak else next((p for key, p in PEAK_BF16 if key in name), None)
        self.meta["peak_bf16_tflops"] = self.peak
        print(f"# {name}, torch {torch.__version__}, diffusers {self.meta['diffusers']}, "
              f"bf16 peak {self.peak} TFLOP/s, budget {budget_s:.0f} s", flush=True)
        print(f"{'benchmark':<52} {'unit':<6} {'ours':>10} {'diffusers':>10} {'ratio':>6}  {'target':<12} note",
              flush=True)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - START)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"# {text}", flush=True)

    def add(self, name: str, unit: str, mine, other=None, target: str = "", note: str = "") -> None:
        mine_v = statistics.median(mine) if isinstance(mine, list) and mine else mine
        other_v = statistics.median(other) if isinstance(other, list) and other else other
        if isinstance(mine_v, list) or isinstance(other_v, list):  # empty lists
            mine_v = mine_v or None
            other_v = other_v or None
        numeric = isinstance(mine_v, (int, float)) and isinstance(other_v, (int, float))
        ratio = mine_v / other_v if numeric and other_v else None
        row = dict(name=name, unit=unit, ours=mine_v, diffusers=other_v, ratio=ratio, target=target, note=note)
        if isinstance(mine, list) and len(mine) > 1:
            row["ours_samples"] = mine
        if isinstance(other, list) and len(other) > 1:
            row["diffusers_samples"] = other
        self.rows.append(row)

        def cell(v):
            if v is None:
                return "-"
            return f"{v:.4g}" if isinstance(v, float) else str(v)

        print(f"{name:<52} {unit:<6} {cell(mine_v):>10} {cell(other_v):>10} "
              f"{(f'{ratio:.3f}' if ratio is not None else '-'):>6}  {target:<12} {note}", flush=True)
        self.dump()

    def tflops(self, name: str, flops: float, mine, other) -> None:
        """Achieved TFLOP/s, and the fraction of the card's bf16 peak in the note."""
        med = lambda v: statistics.median(v) if isinstance(v, list) and v else None  # noqa: E731
        t_mine, t_other = med(mine), med(other)
        rate = lambda t: flops / t / 1e12 if t else None  # noqa: E731
        note = f"{flops / 1e9:.4g} GFLOP per call"
        if self.peak and t_mine:
            frac = f"{rate(t_mine) / self.peak:.1%}"
            if t_other:
                frac += f" vs {rate(t_other) / self.peak:.1%}"
            note += f"; fraction of {self.peak:.0f} TFLOP/s bf16 peak: {frac}"
        self.add(name, "TF/s", rate(t_mine), rate(t_other), "", note)

    def dump(self) -> None:
        if not self.json_path:
            return
        data = dict(self.meta, elapsed_s=round(time.perf_counter() - START, 1), rows=self.rows, notes=self.notes)
        tmp = self.json_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=str)
        os.replace(tmp, self.json_path)


# ----------------------------------------------------------------------------- sections


def section_unet(rep: Report, cfg: dict, device, dtype) -> None:
    mine = build(ours("UNet2DConditionModel"), cfg["unet_xl"], device, dtype)
    other = twin(theirs("UNet2DConditionModel"), cfg["unet_xl"], mine, device, dtype)
    inputs = unet_inputs(cfg, device, dtype)
    with torch.inference_mode():
        note = ""
        if other is not None:
            note = f"max|ours-diffusers| {max_diff(mine(**inputs)[0], other(**inputs)[0]):.3g}"
        times = alternate({"ours": lambda: mine(**inputs, return_dict=False),
                           "theirs": (lambda: other(**inputs, return_dict=False)) if other is not None else None},
                          device, cfg["repeats"], cfg["rounds"])
    ms = {k: [t * 1e3 for t in v] for k, v in times.items()}
    px = cfg["latent"] * 8
    rep.add(f"SDXL UNet step {px}px b2 {str(dtype)[6:]} eager", "ms", ms["ours"], ms.get("theirs"), "<= 0.95", note)
    flops = forward_flops(mine, inputs)
    rep.meta["unet_flops"] = flops
    rep.tflops("SDXL UNet eager achieved", flops, times["ours"], times.get("theirs"))


def section_flux(rep: Report, cfg: dict, device, dtype) -> None:
    mine = build(ours("FluxTransformer2DModel"), cfg["flux"], device, dtype)
    other = twin(theirs("FluxTransformer2DModel"), cfg["flux"], mine, device, dtype)
    inputs = flux_inputs(cfg, device, dtype)
    with torch.inference_mode():
        note = ""
        if other is not None:
            note = f"max|ours-diffusers| {max_diff(mine(**inputs)[0], other(**inputs)[0]):.3g}"
        times = alternate({"ours": lambda: mine(**inputs, return_dict=False),
                           "theirs": (lambda: other(**inputs, return_dict=False)) if other is not None else None},
                          device, cfg["repeats"], cfg["rounds"])
    ms = {k: [t * 1e3 for t in v] for k, v in times.items()}
    px = cfg["flux_latent"] * 8
    rep.add(f"Flux-shaped 2+4 blocks {px}px {str(dtype)[6:]} eager", "ms", ms["ours"], ms.get("theirs"),
            "<= 0.95", note)
    rep.tflops("Flux-shaped eager achieved", forward_flops(mine, inputs), times["ours"], times.get("theirs"))


def _peak_and_step(model, inputs: dict, device, cfg: dict) -> tuple[list[float], float | None]:
    """Milliseconds per forward (rounds) and peak device memory in GiB over those calls (``None`` on the CPU)."""
    with torch.inference_mode():
        model(**inputs, return_dict=False)  # warm-up: hooks record their order, streams start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = [time_calls(lambda: model(**inputs, return_dict=False), device, cfg["repeats"]) * 1e3
                 for _ in range(cfg["rounds"])]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return times, peak


def section_memory(rep: Report, cfg: dict, device, dtype) -> None:
    """Issue 16's rows: the Flux-shaped transformer with fp8 layerwise casting, block-level group offload
    (weights on the CPU, streamed) and bitsandbytes nf4, ours against Diffusers doing the same; step time
    and peak device memory.  GGUF rows need a .gguf writer on the machine (the `gguf` package): skipped."""
    import tempfile as _tempfile

    inputs = flux_inputs(cfg, device, dtype)
    fp8 = getattr(torch, "float8_e4m3fn", None)
    offload = dict(onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
                   num_blocks_per_group=1, use_stream=device.type == "cuda")

    def pair(label: str, setup) -> None:
        results = {}
        for lib, cls in (("ours", ours("FluxTransformer2DModel")), ("theirs", theirs("FluxTransformer2DModel"))):
            if cls is None:
                continue
            model = build(ours("FluxTransformer2DModel"), cfg["flux"], "cpu", dtype)
            if lib == "theirs":
                model = twin(cls, cfg["flux"], model, "cpu", dtype)
            try:
                model = setup(model, lib)
                results[lib] = (*_peak_and_step(model, inputs, device, cfg), model(**inputs, return_dict=False)[0])
            except Exception as exc:  # one library's failure keeps the other's row
                rep.note(f"{label} {lib} failed: {type(exc).__name__}: {str(exc)[:200]}")
            del model
            free(device)
        if "ours" not in results:
            return
        note = ""
        if "theirs" in results:
            note = f"max|ours-diffusers| {max_diff(results['ours'][2], results['theirs'][2]):.3g}"
        theirs_row = results.get("theirs", (None, None))
        rep.add(f"Flux-shaped {label} step", "ms", results["ours"][0], theirs_row[0], "<= 1.0", note)
        if results["ours"][1] is not None:
            rep.add(f"Flux-shaped {label} peak memory", "GiB", results["ours"][1], theirs_row[1], "<= 1.0")

    pair("bf16 resident", lambda m, lib: m.to(device))
    if fp8 is not None:
        pair("fp8 layerwise casting", lambda m, lib: (m.to(device), m.enable_layerwise_casting(
            storage_dtype=fp8, compute_dtype=dtype))[0])
    pair("group offload block_level", lambda m, lib: (m.enable_group_offload(**offload), m)[1])
    section_memory_gguf(rep, cfg, device, dtype, pair)
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # the GPU machine may lack it: carry its wheel in .whl/
        rep.note(f"nf4 rows skipped: bitsandbytes not importable ({type(exc).__name__})")
        return
    if device.type != "cuda":
        rep.note("nf4 rows skipped: a CUDA device is needed for a fair 4-bit step")
        return

    def nf4(model, lib):
        with _tempfile.TemporaryDirectory(prefix="kbench-nf4-") as folder:
            model.save_pretrained(folder)
            if lib == "ours":
                config = ours("BitsAndBytesConfig")(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                    bnb_4bit_compute_dtype=dtype)
            else:
                import diffusers

                config = diffusers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_compute_dtype=dtype)
            cls = type(model)
            return cls.from_pretrained(folder, torch_dtype=dtype, quantization_config=config).to(device)

    pair("bitsandbytes nf4", nf4)



def _write_gguf_q4_0(model, path: Path) -> None:
    """``model`` (a Flux transformer) as a city96-style GGUF file: BFL's original key names, unprefixed, every
    2-D weight whose rows fit 32-value blocks in Q4_0 and the rest in float32."""
    import gguf
    import numpy as np
    from kernel_single_file.convert import to_original

    state = to_original("flux-dev", {"transformer": model.state_dict()}, {"transformer": dict(model.config)})
    writer = gguf.GGUFWriter(str(path), "flux")
    q4 = gguf.GGMLQuantizationType.Q4_0
    for key, tensor in state.items():
        values = tensor.float().cpu().numpy()
        key = key.removeprefix("model.diffusion_model.")
        if values.ndim == 2 and key.endswith(".weight") and values.shape[1] % 32 == 0:
            data = gguf.quants.quantize(values, q4)
            writer.add_tensor(key, data, raw_shape=data.shape, raw_dtype=q4)
        else:
            writer.add_tensor(key, values.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def section_memory_gguf(rep: Report, cfg: dict, device, dtype, pair) -> None:
    """The GGUF Q4_0 row of ``memory``: one file written from the seeded model, loaded by both libraries with
    ``from_single_file(file, config=folder, quantization_config=GGUFQuantizationConfig(compute_dtype))``."""
    import tempfile as _tempfile

    try:
        import gguf  # noqa: F401
        from kernel_single_file.convert import to_original  # noqa: F401
    except Exception as exc:  # the GPU machine may lack the gguf package: carry its wheel in .whl/
        rep.note(f"GGUF row skipped: {type(exc).__name__}: {str(exc)[:120]}")
        return
    with _tempfile.TemporaryDirectory(prefix="kbench-gguf-") as tmp:
        folder, file = Path(tmp) / "model", Path(tmp) / "flux-Q4_0.gguf"
        model = build(ours("FluxTransformer2DModel"), cfg["flux"], "cpu", torch.float32)
        model.save_pretrained(folder)
        _write_gguf_q4_0(model, file)
        del model

        def load(_, lib):
            if lib == "ours":
                cls, config = ours("FluxTransformer2DModel"), ours("GGUFQuantizationConfig")(compute_dtype=dtype)
            else:
                import diffusers

                cls, config = diffusers.FluxTransformer2DModel, diffusers.GGUFQuantizationConfig(compute_dtype=dtype)
            return cls.from_single_file(str(file), config=str(folder), quantization_config=config,
                                        torch_dtype=dtype).to(device)

        pair("GGUF Q4_0", load)


def section_explain(rep: Report, cfg: dict, device, dtype) -> None:
    import torch._dynamo

    def breaks(model, inputs):
        torch._dynamo.reset()
        with torch.no_grad():
            result = torch._dynamo.explain(model)(**inputs, return_dict=False)
        reasons = "; ".join(str(getattr(r, "reason", r)).splitlines()[0] for r in result.break_reasons[:3])
        return result.graph_break_count, reasons

    for label, name, key, make in (("SDXL UNet", "UNet2DConditionModel", "unet_xl", unet_inputs),
                                   ("Flux-shaped transformer", "FluxTransformer2DModel", "flux", flux_inputs)):
        inputs = make(cfg, device, dtype)
        mine = build(ours(name), cfg[key], device, dtype)
        n_mine, why_mine = breaks(mine, inputs)
        del mine
        other_cls = theirs(name)
        n_other, why_other = None, ""
        if other_cls is not None:
            other = build(other_cls, cfg[key], device, dtype)
            n_other, why_other = breaks(other, inputs)
            del other
        note = "; ".join(x for x in (f"ours: {why_mine}" if why_mine else "",
                                     f"diffusers: {why_other}" if why_other else "") if x)
        rep.add(f"graph breaks, {label} (dynamo.explain)", "count", n_mine, n_other, "0", note)
        free(device)
    torch._dynamo.reset()


def section_compile(rep: Report, cfg: dict, device, dtype, opts) -> None:
    """Each (library, mode) compiles in its own process with an empty Inductor/Triton cache."""
    results = {}
    # Regional first: if the budget runs out, the slow full-graph compile of ours is what is lost.
    for mode, lib in (("regional", "ours"), ("regional", "diffusers"), ("full", "diffusers"), ("full", "ours")):
        if lib == "diffusers" and theirs("UNet2DConditionModel") is None:
            continue
        limit = min(opts.compile_timeout, rep.left() - 5)
        if limit < 30:
            rep.note(f"compile {mode}/{lib} skipped: {rep.left():.0f} s of the time budget left")
            continue
        with tempfile.TemporaryDirectory(prefix="kbench-inductor-") as cache:
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"),
                       TORCHINDUCTOR_FX_GRAPH_CACHE="0", TORCHINDUCTOR_AUTOGRAD_CACHE="0")
            cmd = [sys.executable, __file__, "--worker", "compile", "--lib", lib, "--mode", mode,
                   "--device", str(device), "--backend", opts.backend] + (["--tiny"] if opts.tiny else [])
            # Own session, so a timeout also ends Inductor's compile workers.
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            try:
                stdout, stderr = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                rep.note(f"compile {mode}/{lib}: timed out after {limit:.0f} s")
                continue
        if proc.returncode != 0:
            rep.note(f"compile {mode}/{lib} failed: {stderr.strip()[-800:]}")
            continue
        results[mode, lib] = json.loads(stdout.strip().splitlines()[-1])
    get = lambda mode, lib, key: results.get((mode, lib), {}).get(key)  # noqa: E731
    for mode, label in (("full", "torch.compile(fullgraph=True)"), ("regional", "compile_repeated_blocks")):
        notes = [f"{lib}: {get(mode, lib, 'note')}" for lib in ("ours", "diffusers") if get(mode, lib, "note")]
        rep.add(f"SDXL UNet compile time, {label}", "s", get(mode, "ours", "compile_s"),
                get(mode, "diffusers", "compile_s"), "", "; ".join(notes))
    rep.add("SDXL UNet compile time, ours regional / theirs full", "s", get("regional", "ours", "compile_s"),
            get("full", "diffusers", "compile_s"), "<= 0.25")
    flops = rep.meta.get("unet_flops")
    for mode, label in (("full", "full graph"), ("regional", "regional")):
        mine, other = get(mode, "ours", "step_ms"), get(mode, "diffusers", "step_ms")
        rep.add(f"SDXL UNet step compiled, {label}", "ms", mine, other, "<= 0.8",
                f"graphs: ours {get(mode, 'ours', 'graphs')}, diffusers {get(mode, 'diffusers', 'graphs')}")
        if flops:
            rep.tflops(f"SDXL UNet compiled ({label}) achieved", flops, [mine / 1e3] if mine else None,
                       [other / 1e3] if other else None)


def worker_compile(opts) -> dict:
    """Runs in a child process: build, compile, first call (the compile time), then timed calls."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    cfg, device, dtype = setup(opts)
    cls = ours("UNet2DConditionModel") if opts.lib == "ours" else theirs("UNet2DConditionModel")
    model = build(cls, cfg["unet_xl"], device, dtype)
    inputs = unet_inputs(cfg, device, dtype)
    note = ""

    def compiled(fullgraph: bool):
        if opts.mode == "full":
            return torch.compile(model, fullgraph=fullgraph, backend=opts.backend)
        model.compile_repeated_blocks(fullgraph=fullgraph, backend=opts.backend)
        return model

    with torch.no_grad():
        sync(device)
        t0 = time.perf_counter()
        try:
            run = compiled(True)
            run(**inputs, return_dict=False)
        except Exception as exc:  # a graph break under fullgraph=True: say so, measure without it
            note = f"fullgraph=True failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); fullgraph=False"
            torch._dynamo.reset()
            run = compiled(False)
            run(**inputs, return_dict=False)
        sync(device)
        compile_s = time.perf_counter() - t0
        step = statistics.median(alternate({"c": lambda: run(**inputs, return_dict=False)}, device, cfg["repeats"],
                                           cfg["rounds"], warmup=2)["c"])
    return dict(compile_s=compile_s, step_ms=step * 1e3, graphs=counters["stats"].get("unique_graphs"), note=note)


def sdxl_pipelines(cfg: dict, device, dtype, tokenizer_dir: Path):
    """Our SDXL pipeline and Diffusers' (or ``None``) over the same weights; text encoders shared."""
    from transformers import CLIPTokenizer

    sched = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                 timestep_spacing="leading", num_train_timesteps=1000)
    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    te = clip_encoder(cfg["clip_l"], device, dtype, projection=False)
    te2 = clip_encoder(cfg["clip_g"], device, dtype, projection=True)
    parts = {}
    for name, key in (("unet", "unet_xl"), ("vae", "vae_xl")):
        cls = "UNet2DConditionModel" if name == "unet" else "AutoencoderKL"
        parts[name] = build(ours(cls), cfg[key], device, dtype)
        parts[name + "_theirs"] = twin(theirs(cls), cfg[key], parts[name], device, dtype)
    common = dict(text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok, add_watermarker=False)
    mine = ours("StableDiffusionXLPipeline")(vae=parts["vae"], unet=parts["unet"],
                                             scheduler=ours("EulerDiscreteScheduler")(**sched), **common)
    other = None
    if theirs("StableDiffusionXLPipeline") is not None:
        other = theirs("StableDiffusionXLPipeline")(vae=parts["vae_theirs"], unet=parts["unet_theirs"],
                                                     scheduler=theirs("EulerDiscreteScheduler")(**sched), **common)
    return mine, other


def sd15_pipelines(cfg: dict, device, dtype, tokenizer_dir: Path):
    from transformers import CLIPTokenizer

    sched = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                 skip_prk_steps=True, set_alpha_to_one=False, num_train_timesteps=1000)
    common = dict(text_encoder=clip_encoder(cfg["clip_15"], device, dtype, projection=False),
                  tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir)), safety_checker=None,
                  feature_extractor=None, requires_safety_checker=False)
    unet = build(ours("UNet2DConditionModel"), cfg["unet_15"], device, dtype)
    vae = build(ours("AutoencoderKL"), cfg["vae_15"], device, dtype)
    mine = ours("StableDiffusionPipeline")(vae=vae, unet=unet, scheduler=ours("PNDMScheduler")(**sched), **common)
    other = None
    if theirs("StableDiffusionPipeline") is not None:
        other = theirs("StableDiffusionPipeline")(
            vae=twin(theirs("AutoencoderKL"), cfg["vae_15"], vae, device, dtype),
            unet=twin(theirs("UNet2DConditionModel"), cfg["unet_15"], unet, device, dtype),
            scheduler=theirs("PNDMScheduler")(**sched), **common)
    return mine, other


def controlnet_pipelines(mine, other, device, dtype):
    """The SD 1.5-shaped pipelines' ControlNet variants (``from_pipe``, sharing their modules) with a net started
    from our UNet (``ControlNetModel.from_unet``) and its Diffusers twin; Diffusers' is ``None`` without it."""
    factor = mine.vae_scale_factor
    widths = (16, 32, 96, 256)[: factor.bit_length()]  # one stride-2 stage per halving: 8x -> 4 widths
    with torch.device(device):
        net = ours("ControlNetModel").from_unet(mine.unet, conditioning_embedding_out_channels=widths)
    net = net.to(dtype).eval().requires_grad_(False)
    cn_mine = ours("StableDiffusionControlNetPipeline").from_pipe(mine, controlnet=net)
    cn_other = None
    if other is not None and theirs("StableDiffusionControlNetPipeline") is not None:
        config = {k: v for k, v in net.config.items() if not k.startswith("_")}
        cn_other = theirs("StableDiffusionControlNetPipeline").from_pipe(
            other, controlnet=twin(theirs("ControlNetModel"), config, net, device, dtype))
    return cn_mine, cn_other


def time_pipelines(rep: Report, label: str, mine, other, size: int, steps: int, cfg: dict, device,
                   extra: dict | None = None, graphs: bool = True) -> None:
    """End-to-end time of both pipelines (``extra``: further call arguments); with ``graphs``, ours again with
    ``enable_cuda_graphs``."""
    images = {}

    def call(pipe, n):
        pipe.set_progress_bar_config(disable=True)

        def run():
            images[id(pipe)] = pipe("a photo of an astronaut riding a horse", height=size, width=size,
                                    num_inference_steps=n, output_type="np",
                                    generator=torch.Generator().manual_seed(0), **(extra or {})).images
        return run

    for pipe in (mine, other):  # warm-up: kernels, cuBLAS handles, allocator
        if pipe is not None:
            call(pipe, 2)()
    times = alternate({"ours": call(mine, steps), "theirs": call(other, steps) if other is not None else None},
                      device, 1, cfg["pipe_rounds"], warmup=0)
    note = ""
    if other is not None:
        diff = max_diff(torch.as_tensor(images[id(mine)]), torch.as_tensor(images[id(other)]))
        note = f"max|image ours-diffusers| {diff:.3g}"
    rep.add(f"{label} pipeline {size}px {steps} steps {str(mine.unet.dtype)[6:]} end to end", "s", times["ours"],
            times.get("theirs"), "<= 0.95", note)
    if not graphs:
        return
    # The same pipeline with the denoiser replayed from CUDA graphs (pipe.enable_cuda_graphs()).
    if torch.device(device).type != "cuda":
        rep.note(f"{label} enable_cuda_graphs row skipped: needs CUDA")
        return
    eager = torch.as_tensor(images[id(mine)])
    try:
        mine.enable_cuda_graphs()
        call(mine, 2)()  # captures the step's graph for this size
        graphed = alternate({"ours": call(mine, steps)}, device, 1, cfg["pipe_rounds"], warmup=0)["ours"]
        same = torch.equal(torch.as_tensor(images[id(mine)]), eager)
        rep.add(f"{label} pipeline {size}px {steps} steps, ours with enable_cuda_graphs", "s", graphed,
                times.get("theirs"), "<= 0.5 of Diffusers eager", f"image identical to ours eager: {same}")
    except Exception as exc:  # a failed capture is a result to report, not a reason to lose the table
        rep.note(f"{label} enable_cuda_graphs failed: {type(exc).__name__}: {exc}")
    finally:
        mine.disable_cuda_graphs()


def denoise_loop(unet, scheduler, latents, context, added, steps: int, device):
    """The bare loop: guidance batch, UNet, classifier-free guidance, scheduler step."""
    scheduler.set_timesteps(steps, device=device)
    x = latents * scheduler.init_noise_sigma

    def run():
        nonlocal x
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
            eps = unet(model_in, t, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False)[0]
            uncond, cond = eps.chunk(2)
            x = scheduler.step(uncond + 5.0 * (cond - uncond), t, x, return_dict=False)[0]
        return x

    return run


def count_syncs(fn) -> tuple[int, str]:
    """Run ``fn`` with CUDA's sync debug mode warning; the number of synchronising calls and the first."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    hits = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    return len(hits), (hits[0].splitlines()[0][:120] if hits else "")


def strict_no_sync(fn) -> str:
    """``"ok"`` when ``fn`` runs under ``set_sync_debug_mode("error")``, else the error's first line."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return "ok"
    except RuntimeError as exc:
        return f"raised: {str(exc).splitlines()[0][:160]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)


def section_sync(rep: Report, cfg: dict, device, dtype, mine, other) -> None:
    steps = cfg["sync_steps"]
    for pipe in (mine, other):
        if pipe is not None:
            pipe.set_progress_bar_config(disable=True)
    if device.type != "cuda":
        # No sync debug mode off CUDA; the meta device is the stand-in: it has no values, so any
        # read of one (.item(), nonzero, a copy to the host) raises.
        meta = torch.device("meta")
        results = {}
        for lib, pipe in (("ours", mine), ("diffusers", other)):
            if pipe is None:
                continue
            with torch.device(meta):
                unet = type(pipe.unet).from_config(pipe.unet.config)
            sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
            inputs = unet_inputs(cfg, meta, torch.float32)
            try:
                with torch.no_grad():
                    denoise_loop(unet, sched, inputs["sample"][:1], inputs["encoder_hidden_states"],
                                 inputs["added_cond_kwargs"], steps, meta)()
                results[lib] = "ok"
            except Exception as exc:
                results[lib] = f"reads device values ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})"
        rep.add(f"{steps}-step SDXL loop on the meta device (CPU stand-in)", "", results.get("ours"),
                results.get("diffusers"), "ok")
        return
    inputs = unet_inputs(cfg, device, dtype)
    loops = {}
    for lib, pipe in (("ours", mine), ("diffusers", other)):
        if pipe is not None:
            make = lambda p=pipe, n=steps: denoise_loop(p.unet, p.scheduler, inputs["sample"][:1],  # noqa: E731
                                                        inputs["encoder_hidden_states"], inputs["added_cond_kwargs"],
                                                        n, device)
            with torch.no_grad():
                make(n=2)()  # warm-up outside the check
            loops[lib] = make
    with torch.no_grad():
        verdict = strict_no_sync(loops["ours"]())
        counted = {lib: count_syncs(make()) for lib, make in loops.items()}
    first = "; ".join(f"{lib} first: {why}" for lib, (_, why) in counted.items() if why)
    rep.add(f"host syncs, {steps}-step SDXL loop (UNet+CFG+Euler)", "count", counted["ours"][0],
            counted.get("diffusers", (None,))[0], "0", f"ours under mode 'error': {verdict}. {first}")

    def pipeline_syncs(pipe, strict: bool):
        """Sync check inside the pipeline's own loop: on after step 0's callback, off after the last."""
        state = {}

        def callback(p, i, t, kwargs):
            if i == 0:
                state["ctx"] = contextlib.ExitStack()
                if strict:
                    torch.cuda.set_sync_debug_mode("error")
                else:
                    caught = state["ctx"].enter_context(warnings.catch_warnings(record=True))
                    warnings.simplefilter("always")
                    state["caught"] = caught
                    torch.cuda.set_sync_debug_mode("warn")
            if i == steps - 1:
                torch.cuda.set_sync_debug_mode(0)
                state["ctx"].close()
            return {}

        try:
            pipe("a photo of a cat", num_inference_steps=steps, output_type="latent", callback_on_step_end=callback,
                 height=cfg["latent"] * 8, width=cfg["latent"] * 8)
        except RuntimeError as exc:
            return f"raised: {str(exc).splitlines()[0][:160]}"
        finally:
            torch.cuda.set_sync_debug_mode(0)
            if "ctx" in state:
                state["ctx"].close()
        if strict:
            return "ok"
        return sum("synchroniz" in str(w.message) for w in state["caught"])

    verdict = pipeline_syncs(mine, True)
    rep.add(f"host syncs, SDXL pipeline loop steps 2-{steps}", "count", pipeline_syncs(mine, False),
            pipeline_syncs(other, False) if other is not None else None, "0",
            f"ours under mode 'error': {verdict}")


def section_pipelines(rep: Report, cfg: dict, device, dtype, tokenizer_dir: Path, want_load: bool) -> None:
    size, steps = cfg["sd15"]
    if rep.left() > 30:
        mine, other = sd15_pipelines(cfg, device, dtype, tokenizer_dir)
        with torch.no_grad():
            time_pipelines(rep, "SD1.5-shaped", mine, other, size, steps, cfg, device)
        if rep.left() > 60:  # the same pipeline with a ControlNet of the UNet's shape (issue 14)
            from PIL import Image

            edges = Image.fromarray((torch.rand(size, size, 3, generator=torch.Generator().manual_seed(0)) * 255)
                                    .to(torch.uint8).numpy())
            cn_mine, cn_other = controlnet_pipelines(mine, other, device, dtype)
            with torch.no_grad():
                time_pipelines(rep, "SD1.5-shaped ControlNet", cn_mine, cn_other, size, steps, cfg, device,
                               extra={"image": edges}, graphs=False)
            del cn_mine, cn_other
        else:
            rep.note(f"SD1.5-shaped ControlNet pipeline skipped: {rep.left():.0f} s of the time budget left")
        del mine, other
        free(device)
    mine, other = sdxl_pipelines(cfg, device, dtype, tokenizer_dir)
    size, steps = cfg["xl"]
    if rep.left() > 40:
        with torch.no_grad():
            time_pipelines(rep, "SDXL-shaped", mine, other, size, steps, cfg, device)
    if rep.left() > 20:
        section_sync(rep, cfg, device, dtype, mine, other)
    if want_load and rep.left() > 60:
        with tempfile.TemporaryDirectory(prefix="kbench-sdxl-") as folder:
            t0 = time.perf_counter()
            mine.save_pretrained(folder)
            rep.note(f"wrote the SDXL-shaped fp16 pipeline in {time.perf_counter() - t0:.1f} s")
            del mine, other
            free(device)
            section_load(rep, cfg, device, dtype, Path(folder))
    elif want_load:
        rep.note(f"load skipped: {rep.left():.0f} s of the time budget left")


def section_load(rep: Report, cfg: dict, device, dtype, folder: Path) -> None:
    import kernel

    def load(lib):
        def run():
            if lib == "ours":
                pipe = kernel.load(str(folder), torch_dtype=dtype, device_map=str(device))
            else:
                pipe = theirs("DiffusionPipeline").from_pretrained(str(folder), torch_dtype=dtype,
                                                                   device_map=str(device))
            assert pipe.unet.device.type == device.type
            del pipe
        return run

    times = {"ours": [], "theirs": []}
    libs = ["ours"] + (["theirs"] if theirs("DiffusionPipeline") is not None else [])
    for _ in range(cfg["load_rounds"]):
        for lib in libs:
            times[lib].append(time_calls(load(lib), device, 1))
            free(device)
    gib = _weights.weights_bytes(folder) / 2**30
    speed = f"{gib:.2f} GiB of safetensors (page cache warm), ours {gib / statistics.median(times['ours']):.1f} GiB/s"
    rep.add(f"load SDXL-shaped {str(dtype)[6:]} pipeline onto {device.type}", "s", times["ours"],
            times["theirs"] or None, "<= 0.5", speed)


# ----------------------------------------------------------------------------- video and two-stage (issues 17, 18)


def _fill_zeros(model, seed: int = 3, std: float = 0.02):
    """Replace every all-zero parameter (zero-initialised output projections, GRN gains, norm biases) with seeded
    noise, so a max difference also covers the paths a fresh model would switch off; returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_((torch.randn(p.shape, generator=g) * std).to(p.device, p.dtype))
    return model


def _pair(name: str, config: dict, device, dtype):
    """Ours (seeded, no all-zero parameters) and Diffusers' ``name`` holding the same state dict (or ``None``)."""
    mine = _fill_zeros(build(ours(name), config, device, dtype))
    return mine, twin(theirs(name), config, mine, device, dtype)


def _weights_gib(model) -> float:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**30


def compare(rep: Report, label: str, calls: dict, models: dict, device, repeats: int, rounds: int,
            target: str = "<= 0.95", warmup: dict | None = None) -> None:
    """One timing row (ms per call, ours and Diffusers alternating) with the outputs' max difference, and on CUDA
    one peak-memory row: for each library its model's weights plus the most any of its timed calls allocated above
    what was resident when the call began (both models share the card, so the other library's weights stay out
    of each figure).  The allocator's counters are host-side: reading them adds no synchronisation."""
    calls = {k: f for k, f in calls.items() if f is not None}
    cuda = device.type == "cuda"
    out, peaks = {}, {}

    def keep(lib, fn):
        def run():
            out.pop(lib, None)  # the previous output is not part of this call's peak
            if cuda:
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            out[lib] = fn()
            if cuda:
                peaks[lib] = max(peaks.get(lib, 0.0), (torch.cuda.max_memory_allocated(device) - base) / 2**30)
        return run

    with torch.inference_mode():
        for lib, fn in (warmup or {}).items():  # a cheaper warm-up than a full call, where one is given
            if lib in calls and fn is not None:
                fn()
        times = alternate({lib: keep(lib, fn) for lib, fn in calls.items()}, device, repeats, rounds,
                          warmup=0 if warmup else 1)
        note = f"max|ours-diffusers| {max_diff(out['ours'], out['theirs']):.3g}" if "theirs" in out else ""
    out.clear()
    ms = {k: [t * 1e3 for t in v] for k, v in times.items()}
    rep.add(label, "ms", ms["ours"], ms.get("theirs"), target, note)
    if peaks:
        weights = {lib: _weights_gib(models[lib]) for lib in peaks}
        rep.add(f"{label}, peak memory", "GiB", peaks["ours"] + weights["ours"],
                peaks["theirs"] + weights["theirs"] if "theirs" in peaks else None, "<= 1.0",
                f"weights {weights['ours']:.2f} GiB + the largest per-call peak above resident")


def section_video(rep: Report, cfg: dict, device, dtype, half) -> None:
    """CogVideoX-2b transformer step, CogVideoX-2b VAE tiled decode, SD1.5-shaped AnimateDiff UNet step."""
    reps, rounds = cfg["video_repeats"], cfg["video_rounds"]
    g = torch.Generator().manual_seed(0)
    # 1. CogVideoX-2b transformer, full depth unless the budget is short.
    config = dict(cfg["cog"])
    frames, height, width = cfg["cog_latent"]
    depth = config["num_layers"]
    if rep.left() < cfg["cog_full_s"]:
        config["num_layers"] = depth = min(depth, cfg["cog_short_depth"])
        rep.note(f"CogVideoX transformer cut to {depth} layers: {rep.left():.0f} s of the time budget left")
    mine, other = _pair("CogVideoXTransformer3DModel", config, device, dtype)
    inputs = dict(hidden_states=torch.randn(2, frames, config["in_channels"], height, width,
                                            generator=g).to(device, dtype),
                  encoder_hidden_states=torch.randn(2, config["max_text_seq_length"], config["text_embed_dim"],
                                                    generator=g).to(device, dtype),
                  timestep=torch.full((2,), 500, device=device, dtype=torch.long))
    call = lambda m: (lambda: m(**inputs, return_dict=False)[0]) if m is not None else None  # noqa: E731
    tokens = frames * (height // config["patch_size"]) * (width // config["patch_size"])
    compare(rep, f"CogVideoX-2b transformer {depth} layers {frames}x{height}x{width} ({tokens} tok) b2 "
            f"{str(dtype)[6:]} step", {"ours": call(mine), "theirs": call(other)}, {"ours": mine, "theirs": other},
            device, reps, rounds)
    del mine, other, inputs
    free(device)
    # 2. CogVideoX-2b VAE, tiled decode (enable_tiling with its defaults: tiles of half the sample size).
    if rep.left() < cfg["cog_vae_s"]:
        rep.note(f"CogVideoX VAE decode skipped: {rep.left():.0f} s of the time budget left")
    else:
        mine, other = _pair("AutoencoderKLCogVideoX", cfg["cog_vae"], device, dtype)
        for m in (mine, other):
            if m is not None:
                m.enable_tiling(**cfg["cog_tiles"])
        lat_frames, lat_h, lat_w = cfg["cog_vae_latent"]
        z = torch.randn(1, cfg["cog_vae"]["latent_channels"], lat_frames, lat_h, lat_w, generator=g).to(device, dtype)
        call = lambda m, x=z: (lambda: m.decode(x, return_dict=False)[0]) if m is not None else None  # noqa: E731
        short = z[:, :, :3]  # warm-up on 3 latent frames: same kernels, a quarter of the work
        out_frames = (lat_frames - 1) * cfg["cog_vae"]["temporal_compression_ratio"] + 1
        compare(rep, f"CogVideoX-2b VAE tiled decode {lat_frames} latent -> {out_frames} frames "
                f"{lat_h * 8}x{lat_w * 8} {str(dtype)[6:]}", {"ours": call(mine), "theirs": call(other)},
                {"ours": mine, "theirs": other}, device, 1, cfg["vae_rounds"],
                warmup={"ours": call(mine, short), "theirs": call(other, short)})
        del mine, other, z, short
        free(device)
    # 3. AnimateDiff: SD 1.5-shaped UNetMotionModel (v1-5-2 adapter shape: motion mid block, 32 positions).
    mine, other = _pair("UNetMotionModel", cfg["motion"], device, half)
    frames, side = cfg["motion_latent"]
    inputs = dict(sample=torch.randn(2, 4, frames, side, side, generator=g).to(device, half),
                  timestep=torch.full((2,), 500, device=device, dtype=torch.long),
                  encoder_hidden_states=torch.randn(2, 77, cfg["motion"]["cross_attention_dim"], generator=g)
                  .repeat_interleave(frames, 0).to(device, half))  # per frame, as the AnimateDiff pipeline passes it
    call = lambda m: (lambda: m(**inputs, return_dict=False)[0]) if m is not None else None  # noqa: E731
    compare(rep, f"AnimateDiff SD1.5-shaped UNetMotionModel {frames} frames {side * 8}px b2 {str(half)[6:]} step",
            {"ours": call(mine), "theirs": call(other)}, {"ours": mine, "theirs": other}, device, reps, rounds)
    del mine, other, inputs


def section_two_stage(rep: Report, cfg: dict, device, dtype) -> None:
    """Stable Cascade lite stage C (prior) and stage B (decoder) UNet steps, guidance batch 2."""
    g = torch.Generator().manual_seed(0)
    c_side, b_side = cfg["cascade_latent"]
    stage_c, stage_b = cfg["stage_c"], cfg["stage_b"]
    rand = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    rows = (
        ("C (prior)", stage_c, dict(sample=rand(2, 16, c_side, c_side),
                                    clip_text_pooled=rand(2, 1, stage_c["clip_text_pooled_in_channels"]),
                                    clip_text=rand(2, 77, stage_c["clip_text_in_channels"]),
                                    clip_img=rand(2, 1, stage_c["clip_image_in_channels"])), cfg["cascade_px"]),
        ("B (decoder)", stage_b, dict(sample=rand(2, 4, b_side, b_side),
                                      clip_text_pooled=rand(2, 1, stage_b["clip_text_pooled_in_channels"]),
                                      effnet=rand(2, 16, c_side, c_side),
                                      pixels=torch.zeros(2, 3, 8, 8, device=device, dtype=dtype)), cfg["cascade_px"]),
    )
    for stage, config, inputs, px in rows:
        inputs["timestep_ratio"] = torch.full((2,), 0.5, device=device, dtype=dtype)
        mine, other = _pair("StableCascadeUNet", config, device, dtype)
        params = sum(p.numel() for p in mine.parameters()) / 1e9
        call = lambda m: (lambda: m(**inputs, return_dict=False)[0]) if m is not None else None  # noqa: E731
        compare(rep, f"Stable Cascade lite stage {stage} UNet ({params:.2g} B) {px}px b2 {str(dtype)[6:]} step",
                {"ours": call(mine), "theirs": call(other)}, {"ours": mine, "theirs": other}, device,
                cfg["video_repeats"], cfg["video_rounds"])
        del mine, other
        free(device)


# ----------------------------------------------------------------------------- main


def setup(opts):
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --tiny for a dry run")
    cfg = TINY if opts.tiny else FULL
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny shapes: more threads only contend
    return cfg, device, dtype


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and a few steps (CPU dry run)")
    parser.add_argument("--only", default="", help=f"comma list of sections: {','.join(SECTIONS)}")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip sections that would overrun this")
    parser.add_argument("--compile-timeout", type=float, default=240.0, help="seconds per compile process")
    parser.add_argument("--backend", default=None, help="torch.compile backend (inductor on CUDA, eager on CPU)")
    parser.add_argument("--json", default=None, help="results file (default $OUT/gpu_bench.json when $OUT is set)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--lib", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    opts.backend = opts.backend or ("inductor" if opts.device.startswith("cuda") else "eager")
    if opts.worker == "compile":
        print(json.dumps(worker_compile(opts)))
        return 0
    only = [s for s in opts.only.split(",") if s] or list(SECTIONS)
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only got unknown sections {unknown}; accepted: {', '.join(SECTIONS)}")
    cfg, device, dtype = setup(opts)
    json_path = opts.json or (os.path.join(os.environ["OUT"], "gpu_bench.json") if os.environ.get("OUT") else None)
    rep = Report(device, opts.budget_s, json_path)
    half = torch.float16 if device.type == "cuda" else torch.float32
    # Rough cost of each section on an H100 (seconds), to skip rather than overrun the budget.
    cost = dict(unet=20, flux=15, memory=40, compile=120, pipelines=105, load=0, explain=40, video=90,
                **{"two-stage": 30}) if not opts.tiny else {}
    with tempfile.TemporaryDirectory(prefix="kbench-tok-") as tok:
        _weights.write_tokenizer(Path(tok))
        for name in SECTIONS:
            if name not in only or (name == "load" and "pipelines" in only):
                continue
            if rep.left() < cost.get(name, 0):
                rep.note(f"{name} skipped: {rep.left():.0f} s of the time budget left")
                continue
            t0 = time.perf_counter()
            try:
                if name == "unet":
                    section_unet(rep, cfg, device, dtype)
                elif name == "flux":
                    section_flux(rep, cfg, device, dtype)
                elif name == "memory":
                    section_memory(rep, cfg, device, dtype)
                elif name == "compile":
                    section_compile(rep, cfg, device, dtype, opts)
                elif name == "pipelines":
                    section_pipelines(rep, cfg, device, half, Path(tok), "load" in only)
                elif name == "load":  # alone: build, save and load without the pipeline timings
                    mine, _ = sdxl_pipelines(cfg, device, half, Path(tok))
                    with tempfile.TemporaryDirectory(prefix="kbench-sdxl-") as folder:
                        mine.save_pretrained(folder)
                        del mine
                        free(device)
                        section_load(rep, cfg, device, half, Path(folder))
                elif name == "explain":
                    section_explain(rep, cfg, device, dtype)
                elif name == "video":
                    section_video(rep, cfg, device, dtype, half)
                elif name == "two-stage":
                    section_two_stage(rep, cfg, device, dtype)
            except Exception as exc:  # one failing section must not lose the others
                import traceback

                traceback.print_exc()
                rep.note(f"{name} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
            rep.note(f"{name}: {time.perf_counter() - t0:.1f} s (total {time.perf_counter() - START:.0f} s)")
            free(device)
    rep.notes.extend(_MISSING.values())
    rep.dump()
    failed = [n for n in rep.notes if " failed" in n]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
