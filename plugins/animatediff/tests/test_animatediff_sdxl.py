"""AnimateDiffSDXLPipeline and SDXL motion adapters against Diffusers' with the same tiny weights, plus folders,
registry and bad input."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
import torch

import diffusers
import kernel
from kernel.pipeline import DiffusionPipeline
from kernel_animatediff import MotionAdapter, UNetMotionModel
from kernel_animatediff.sdxl import AnimateDiffSDXLPipeline
from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

# Three stages as Diffusers' SDXL beta adapter, tiny widths; text_time added embedding (6 time ids x 8 + 32 pooled).
XL_UNET = dict(block_out_channels=(8, 16, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4, 4),
               use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
               transformer_layers_per_block=(1, 1, 2), projection_class_embeddings_input_dim=80,
               cross_attention_dim=64, norm_num_groups=2)
XL_ADAPTER = dict(block_out_channels=(8, 16, 16), motion_layers_per_block=1, motion_transformer_layers_per_block=1,
                  motion_norm_num_groups=2, motion_num_attention_heads=2, use_motion_mid_block=False,
                  motion_max_seq_length=32)
BASE = dict(prompt="a cat walks", num_frames=fx.FRAMES, height=fx.SIZE, width=fx.SIZE, num_inference_steps=2,
            output_type="np")
ATOL = 1e-3
_TOK: dict = {}


def tokenizer(kind):
    if kind not in _TOK:
        _TOK[kind] = tiny_clip_tokenizer(tempfile.mkdtemp(prefix=f"tok-adxl-{kind}-"),
                                         pad_token="!" if kind == "2" else "<|endoftext|>")
    return _TOK[kind]


def components(sched="DDIMScheduler", adapter_over=None, seed=0):
    du, ku = fx.pair("UNet2DConditionModel", seed, **XL_UNET)
    da, ka = fx.pair("MotionAdapter", seed + 1, **{**XL_ADAPTER, **(adapter_over or {})})
    dv, kv = fx.pair("AutoencoderKL", seed + 2, **fx.VAE)
    ds, ks = fx.scheduler_pair(sched)
    te = tiny_clip_text_model(tokenizer("1"), seed=seed + 3)
    te2 = tiny_clip_text_model(tokenizer("2"), seed=seed + 4, with_projection=True)
    for t in (te, te2):
        if not hasattr(t, "text_model"):  # Diffusers 0.42 reads text_model for clip_skip; transformers 5 flattened it
            object.__setattr__(t, "text_model", t)
    common = dict(text_encoder=te, text_encoder_2=te2, tokenizer=tokenizer("1"), tokenizer_2=tokenizer("2"))
    return (dict(unet=du, motion_adapter=da, vae=dv, scheduler=ds, **common),
            dict(unet=ku, motion_adapter=ka, vae=kv, scheduler=ks, **common))


def fix_oracle(motion_unet, unet2d):
    """Diffusers 0.42.1's ``UNetMotionModel.from_unet2d`` leaves ``add_embedding`` (SDXL's text_time embedding) at
    its fresh random initialisation instead of copying the UNet's; ours copies it.  Give the oracle the UNet's."""
    motion_unet.add_embedding.load_state_dict(unet2d.add_embedding.state_dict())
    return motion_unet


def pipelines(**kw):
    d, k = components(**kw)
    theirs, ours = diffusers.AnimateDiffSDXLPipeline(**d), AnimateDiffSDXLPipeline(**k)
    fix_oracle(theirs.unet, d["unet"])
    theirs.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(disable=True)
    return theirs, ours


@pytest.fixture(scope="module")
def ddim():
    return pipelines()


def _both(pair, **kwargs):
    theirs, ours = pair
    args = {**BASE, **kwargs}
    seed = args.pop("seed", 0)
    want = theirs(**args, generator=fx.gen(seed)).frames
    got = ours(**args, generator=fx.gen(seed)).frames
    return got, want


def test_sdxl_motion_unet_matches_diffusers():
    """from_unet2d on an SDXL UNet (text_time embedding, no motion mid-block) gives Diffusers' model and numbers."""
    d, k = components()
    theirs = diffusers.UNetMotionModel.from_unet2d(d["unet"], d["motion_adapter"]).eval()
    ours = UNetMotionModel.from_unet2d(k["unet"], k["motion_adapter"]).eval()
    assert not hasattr(ours.mid_block, "motion_modules") and ours.config["motion_max_seq_length"] == 32
    assert set(ours.state_dict()) == set(theirs.state_dict())
    # ours keeps the SDXL UNet's added (text_time) embedding; Diffusers 0.42.1 leaves it random, nothing else differs
    assert torch.equal(ours.add_embedding.linear_1.weight, k["unet"].add_embedding.linear_1.weight)
    mine, oracle = ours.state_dict(), theirs.state_dict()
    assert [n for n in mine if not torch.equal(mine[n], oracle[n])] == [
        f"add_embedding.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
    fix_oracle(theirs, d["unet"])
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 3, 8, 8, generator=g)
    states = torch.randn(2, 5, 64, generator=g)
    added = dict(text_embeds=torch.randn(2, 32, generator=g), time_ids=torch.randn(2, 6, generator=g) * 10)
    want = theirs(sample, 10, states.repeat_interleave(3, 0), added_cond_kwargs=added).sample
    got = ours(sample, 10, states, added_cond_kwargs=added).sample
    assert (got - want).abs().max().item() < 1e-5


@pytest.mark.parametrize("case", [
    dict(),
    dict(prompt=["a cat walks", "the dog"], negative_prompt=["blurry", "dark"], negative_prompt_2=["grey", "wet"]),
    dict(num_frames=6, num_inference_steps=3, seed=4, guidance_rescale=0.5),
    dict(original_size=(32, 32), target_size=(16, 24), crops_coords_top_left=(2, 0),
         negative_original_size=(8, 8), negative_target_size=(16, 16)),
    dict(guidance_scale=1.0),
])
def test_matches_diffusers_ddim(ddim, case):
    got, want = _both(ddim, **case)
    assert fx.max_diff(got, want) < ATOL


@pytest.mark.parametrize("sched", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_scheduler_swap_matches_diffusers(ddim, sched):
    theirs, ours = ddim
    d_s, k_s = fx.scheduler_pair(sched)
    pair = (diffusers.AnimateDiffSDXLPipeline(**{**theirs.components, "scheduler": d_s}),
            AnimateDiffSDXLPipeline.from_pipe(ours, scheduler=k_s))
    pair[0].set_progress_bar_config(disable=True)
    pair[1].set_progress_bar_config(disable=True)
    got, want = _both(pair)
    assert fx.max_diff(got, want) < ATOL


@pytest.mark.parametrize("settings", [dict(num_iters=2), dict(num_iters=2, use_fast_sampling=True, method="gaussian")])
def test_free_init_matches_diffusers(ddim, settings):
    theirs, ours = ddim
    for pipe in ddim:
        pipe.enable_free_init(**settings)
    try:
        got, want = _both(ddim, num_inference_steps=3)
    finally:
        for pipe in ddim:
            pipe.disable_free_init()
    assert fx.max_diff(got, want) < ATOL
    assert not ours.free_init_enabled
    plain = ours(**{**BASE, "num_inference_steps": 3}, generator=fx.gen(0)).frames
    assert fx.max_diff(plain, got) > 1e-3  # FreeInit really changed the result


def test_explicit_latents_and_embeds(ddim):
    theirs, ours = ddim
    latents = torch.randn(1, 4, fx.FRAMES, 8, 8, generator=fx.gen(7))
    pos, neg, pooled, neg_pooled = ours.encode_prompt("a cat walks", negative_prompt="blurry")
    embeds = dict(prompt_embeds=pos, negative_prompt_embeds=neg, pooled_prompt_embeds=pooled,
                  negative_pooled_prompt_embeds=neg_pooled)
    args = {**BASE, "prompt": None, "latents": latents, **embeds}
    want = theirs(**args, generator=fx.gen(0)).frames
    got = ours(**args, generator=fx.gen(0)).frames
    assert fx.max_diff(got, want) < ATOL
    by_prompt = ours(**{**BASE, "latents": latents, "negative_prompt": "blurry"}, generator=fx.gen(0)).frames
    assert fx.max_diff(by_prompt, got) < 1e-5


def test_output_types_and_decode_chunk_size(ddim):
    theirs, ours = ddim
    got, want = _both(ddim, output_type="pt")
    assert tuple(got.shape) == (1, fx.FRAMES, 3, fx.SIZE, fx.SIZE) and fx.max_diff(got, want) < ATOL
    latents = ours(**{**BASE, "output_type": "latent"}, generator=fx.gen(0)).frames
    assert tuple(latents.shape) == (1, 4, fx.FRAMES, 8, 8)
    chunked = ours(**BASE, decode_chunk_size=3, generator=fx.gen(0)).frames
    assert fx.max_diff(chunked, ours(**BASE, generator=fx.gen(0)).frames) < 1e-5
    pil = ours(**{**BASE, "output_type": "pil"}, generator=fx.gen(0)).frames
    assert len(pil) == 1 and len(pil[0]) == fx.FRAMES and pil[0][0].size == (fx.SIZE, fx.SIZE)


def test_folders_both_ways(tmp_path, ddim):
    theirs, ours = ddim
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "theirs")
    assert type(loaded) is AnimateDiffSDXLPipeline
    assert isinstance(loaded.unet, UNetMotionModel) and isinstance(loaded.motion_adapter, MotionAdapter)
    loaded.set_progress_bar_config(disable=True)
    want = theirs(**BASE, generator=fx.gen(0)).frames
    assert fx.max_diff(loaded(**BASE, generator=fx.gen(0)).frames, want) < ATOL

    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.AnimateDiffSDXLPipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    assert fx.max_diff(back(**BASE, generator=fx.gen(0)).frames, want) < ATOL
    assert kernel.load(str(tmp_path / "ours")).__class__ is AnimateDiffSDXLPipeline


def test_registered_under_diffusers_name():
    assert kernel.component("AnimateDiffSDXLPipeline") is AnimateDiffSDXLPipeline


def test_bad_construction():
    _, ours = components(adapter_over={"block_out_channels": (8, 16, 32)})
    with pytest.raises(ValueError, match=r"widths \[8, 16, 32\].*widths \[8, 16, 16\]"):
        AnimateDiffSDXLPipeline(**ours)
    _, ours = components()
    with pytest.raises(TypeError, match="motion_adapter must be a MotionAdapter"):
        AnimateDiffSDXLPipeline(**{**ours, "motion_adapter": "adapter"})
    sd_unet = kernel.component("UNet2DConditionModel")(**fx.UNET)
    with pytest.raises(ValueError, match="needs an SDXL UNet.*addition_embed_type"):
        AnimateDiffSDXLPipeline(**{**ours, "unet": sd_unet})


@pytest.mark.parametrize("bad, match", [
    (dict(num_frames=0), "num_frames must be a positive int"),
    (dict(num_frames=33), r"num_frames=33 is more than the motion modules cover \(motion_max_seq_length=32\)"),
    (dict(height=21), "height must be a positive multiple of 2"),
    (dict(num_videos_per_prompt=0), "num_videos_per_prompt must be a positive int"),
    (dict(decode_chunk_size=0), "decode_chunk_size must be a positive int"),
    (dict(output_type="gif"), "output_type='gif' is not supported"),
    (dict(latents=torch.zeros(1, 4, 3, 8, 8)), r"latents must have shape \(1, 4, 4, 8, 8\)"),
    (dict(prompt=None), "prompt"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 5, 64)), "pooled_prompt_embeds"),
])
def test_bad_input(ddim, bad, match):
    with pytest.raises(ValueError, match=match):
        ddim[1](**{**BASE, **bad})
