"""kernel-sd pipelines against Diffusers' pipelines: same weights, same inputs, same seed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import sd_fixtures as fx  # noqa: E402

import diffusers  # noqa: E402
import kernel_sd  # noqa: E402
from sd_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

SCHEDULERS = ["EulerDiscreteScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "LMSDiscreteScheduler",
              "EulerAncestralDiscreteScheduler"]


def _pair(ours_cls, dcls, dcomp, kcomp):
    d = dcls(**dcomp)
    k = ours_cls(**kcomp)
    d.set_progress_bar_config(disable=True)
    k.set_progress_bar_config(disable=True)
    return d, k


def _run_both(d, k, **kw):
    seed = kw.pop("seed", 0)
    n_gen = kw.pop("n_generators", None)
    out_d = d(generator=fx.gen(seed, n_gen), **kw)
    out_k = k(generator=fx.gen(seed, n_gen), **kw)
    return out_d, out_k


# ---------------------------------------------------------------------------- SD 1.x / 2.x
SD_CASES = [
    dict(prompt="a cat", num_inference_steps=3, height=32, width=32, output_type="np"),
    dict(prompt=["a cat", "the dog"], negative_prompt=["ugly", "bad"], num_inference_steps=2, height=32, width=48,
         output_type="np", num_images_per_prompt=2, guidance_scale=6.0),
    dict(prompt="a cat", num_inference_steps=2, height=48, width=32, output_type="np", guidance_scale=1.0),
    dict(prompt="a cat", num_inference_steps=2, height=32, width=32, output_type="np", guidance_rescale=0.7,
         clip_skip=1, eta=0.5),
    dict(prompt="a dog", num_inference_steps=2, height=32, width=32, output_type="pt", n_generators=2,
         num_images_per_prompt=2),
    dict(prompt="a dog", num_inference_steps=2, height=32, width=32, output_type="pil"),
    dict(prompt="a dog", num_inference_steps=2, height=32, width=32, output_type="latent"),
]


# every scheduler on the first two cases, Euler on all of them
SD_GRID = [(s, c) for s in SCHEDULERS for c in range(2)] + [(SCHEDULERS[0], c) for c in range(2, len(SD_CASES))]


@pytest.mark.parametrize("sched, case", SD_GRID)
def test_sd_text2image(sched, case):
    dcomp, kcomp = fx.sd_components(sched)
    d, k = _pair(kernel_sd.StableDiffusionPipeline, diffusers.StableDiffusionPipeline, dcomp, kcomp)
    out_d, out_k = _run_both(d, k, **SD_CASES[case])
    assert out_k.nsfw_content_detected is None
    fx.assert_images_close(out_k.images, out_d.images)


def test_sd_custom_timesteps_and_latents():
    dcomp, kcomp = fx.sd_components("EulerDiscreteScheduler")
    d, k = _pair(kernel_sd.StableDiffusionPipeline, diffusers.StableDiffusionPipeline, dcomp, kcomp)
    latents = torch.randn(1, 4, 16, 16, generator=fx.gen(5))
    for kw in (dict(timesteps=[999, 600, 300]), dict(sigmas=[14.0, 5.0, 1.0, 0.3])):
        out_d, out_k = _run_both(d, k, prompt="a cat", latents=latents, height=32, width=32, output_type="np", **kw)
        fx.assert_images_close(out_k.images, out_d.images)


def test_sd_prompt_embeds_passthrough():
    dcomp, kcomp = fx.sd_components()
    d, k = _pair(kernel_sd.StableDiffusionPipeline, diffusers.StableDiffusionPipeline, dcomp, kcomp)
    pe, ne = torch.randn(2, 77, 32, generator=fx.gen(1)), torch.randn(2, 77, 32, generator=fx.gen(2))
    out_d, out_k = _run_both(d, k, prompt_embeds=pe, negative_prompt_embeds=ne, num_inference_steps=2,
                             height=32, width=32, output_type="np")
    fx.assert_images_close(out_k.images, out_d.images)


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("sched", ["EulerDiscreteScheduler", "DDIMScheduler"])
def test_sd_img2img(strength, sched):
    dcomp, kcomp = fx.sd_components(sched)
    d, k = _pair(kernel_sd.StableDiffusionImg2ImgPipeline, diffusers.StableDiffusionImg2ImgPipeline, dcomp, kcomp)
    out_d, out_k = _run_both(d, k, prompt=["a cat", "dog"], image=fx.image(32, 48), strength=strength,
                             num_inference_steps=4, output_type="np", num_images_per_prompt=1)
    fx.assert_images_close(out_k.images, out_d.images)


def test_sd_img2img_generator_list():
    dcomp, kcomp = fx.sd_components()
    d, k = _pair(kernel_sd.StableDiffusionImg2ImgPipeline, diffusers.StableDiffusionImg2ImgPipeline, dcomp, kcomp)
    out_d, out_k = _run_both(d, k, prompt="a cat", image=fx.image(), strength=0.6, num_inference_steps=3,
                             output_type="np", num_images_per_prompt=2, n_generators=2)
    fx.assert_images_close(out_k.images, out_d.images)


@pytest.mark.parametrize("strength", [0.75, 1.0])
@pytest.mark.parametrize("channels", [4, 9])
def test_sd_inpaint(strength, channels):
    dcomp, kcomp = fx.sd_components("EulerDiscreteScheduler", unet_over={"in_channels": channels})
    d, k = _pair(kernel_sd.StableDiffusionInpaintPipeline, diffusers.StableDiffusionInpaintPipeline, dcomp, kcomp)
    out_d, out_k = _run_both(d, k, prompt="a cat", image=fx.image(), mask_image=fx.mask(), strength=strength,
                             num_inference_steps=3, height=32, width=32, output_type="np", num_images_per_prompt=2)
    fx.assert_images_close(out_k.images, out_d.images)


def test_sd_inpaint_padding_mask_crop():
    dcomp, kcomp = fx.sd_components("EulerDiscreteScheduler", unet_over={"in_channels": 9})
    d, k = _pair(kernel_sd.StableDiffusionInpaintPipeline, diffusers.StableDiffusionInpaintPipeline, dcomp, kcomp)
    img, m = fx.image(48, 48), fx.mask(48, 48, (10, 12, 22, 20))
    out_d, out_k = _run_both(d, k, prompt="a cat", image=img, mask_image=m, padding_mask_crop=4,
                             num_inference_steps=2, height=32, width=32)
    fx.assert_images_close(out_k.images, out_d.images)
    assert out_k.images[0].size == (48, 48)


def test_sd_callback_on_step_end():
    dcomp, kcomp = fx.sd_components()
    d, k = _pair(kernel_sd.StableDiffusionPipeline, diffusers.StableDiffusionPipeline, dcomp, kcomp)
    seen = []

    def cb(pipe, i, t, kw):
        seen.append((i, sorted(kw)))
        return {"latents": kw["latents"] * 0.9}

    names = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    out_d = d(prompt="a cat", num_inference_steps=2, height=32, width=32, output_type="np", generator=fx.gen(0),
              callback_on_step_end=cb, callback_on_step_end_tensor_inputs=names)
    seen_d, seen[:] = list(seen), []
    out_k = k(prompt="a cat", num_inference_steps=2, height=32, width=32, output_type="np", generator=fx.gen(0),
              callback_on_step_end=cb, callback_on_step_end_tensor_inputs=names)
    assert seen == seen_d == [(0, sorted(names)), (1, sorted(names))]
    fx.assert_images_close(out_k.images, out_d.images)


def test_return_dict_false_and_interrupt():
    _, kcomp = fx.sd_components()
    k = kernel_sd.StableDiffusionPipeline(**kcomp)
    k.set_progress_bar_config(disable=True)
    images, nsfw = k(prompt="a cat", num_inference_steps=2, height=32, width=32, output_type="np", return_dict=False)
    assert images.shape == (1, 32, 32, 3) and nsfw is None

    calls = []

    def stop(pipe, i, t, kw):
        calls.append(i)
        pipe._interrupt = True
        return {}

    k(prompt="a cat", num_inference_steps=4, height=32, width=32, output_type="latent", callback_on_step_end=stop)
    assert calls == [0]


# ---------------------------------------------------------------------------- SDXL
XL_CASES = [
    dict(prompt="a cat", num_inference_steps=2, height=32, width=32, output_type="np"),
    dict(prompt=["a cat", "dog"], prompt_2=["x", "y"], negative_prompt="bad", num_inference_steps=2, height=32,
         width=48, output_type="np", num_images_per_prompt=2, guidance_rescale=0.5),
    dict(prompt="a cat", num_inference_steps=2, height=32, width=32, output_type="np", guidance_scale=1.0,
         original_size=(64, 64), crops_coords_top_left=(4, 8), target_size=(32, 32), clip_skip=1),
    dict(prompt="a cat", num_inference_steps=2, height=32, width=32, output_type="np",
         negative_original_size=(16, 16), negative_target_size=(32, 32), negative_crops_coords_top_left=(2, 2)),
    dict(prompt="a cat", num_inference_steps=4, height=32, width=32, output_type="latent", denoising_end=0.6),
]


@pytest.mark.parametrize("case", range(len(XL_CASES)))
def test_sdxl_text2image(case):
    dcomp, kcomp = fx.xl_components()
    d, k = _pair(kernel_sd.StableDiffusionXLPipeline, diffusers.StableDiffusionXLPipeline, dcomp, kcomp)
    out_d, out_k = _run_both(d, k, **XL_CASES[case])
    fx.assert_images_close(out_k.images, out_d.images)


@pytest.mark.parametrize("sched", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_sdxl_base_refiner_handover(sched):
    base_d, base_k = fx.xl_components(sched)
    ref_d, ref_k = fx.xl_components(sched, refiner=True, seed=3)
    bd, bk = _pair(kernel_sd.StableDiffusionXLPipeline, diffusers.StableDiffusionXLPipeline, base_d, base_k)
    rd, rk = _pair(kernel_sd.StableDiffusionXLImg2ImgPipeline, diffusers.StableDiffusionXLImg2ImgPipeline,
                   dict(ref_d, requires_aesthetics_score=True), dict(ref_k, requires_aesthetics_score=True))
    lat_d, lat_k = _run_both(bd, bk, prompt="a cat", num_inference_steps=5, height=32, width=32,
                             denoising_end=0.7, output_type="latent")
    fx.assert_images_close(lat_k.images, lat_d.images)
    out_d = rd(prompt="a cat", image=lat_d.images, num_inference_steps=5, denoising_start=0.7, output_type="np",
               generator=fx.gen(1), negative_prompt="blur")
    out_k = rk(prompt="a cat", image=lat_k.images, num_inference_steps=5, denoising_start=0.7, output_type="np",
               generator=fx.gen(1), negative_prompt="blur")
    fx.assert_images_close(out_k.images, out_d.images)


@pytest.mark.parametrize("aesthetic", [False, True])
def test_sdxl_img2img(aesthetic):
    dcomp, kcomp = fx.xl_components(refiner=aesthetic)
    extra = dict(requires_aesthetics_score=aesthetic)
    d, k = _pair(kernel_sd.StableDiffusionXLImg2ImgPipeline, diffusers.StableDiffusionXLImg2ImgPipeline,
                 dict(dcomp, **extra), dict(kcomp, **extra))
    out_d, out_k = _run_both(d, k, prompt="a cat", image=fx.image(32, 32), strength=0.6, num_inference_steps=4,
                             output_type="np", num_images_per_prompt=2, aesthetic_score=7.0,
                             negative_aesthetic_score=2.0)
    fx.assert_images_close(out_k.images, out_d.images)


@pytest.mark.parametrize("channels", [4, 9])
@pytest.mark.parametrize("strength", [0.7, 1.0])
def test_sdxl_inpaint(channels, strength):
    dcomp, kcomp = fx.xl_components(unet_over={"in_channels": channels})
    d, k = _pair(kernel_sd.StableDiffusionXLInpaintPipeline, diffusers.StableDiffusionXLInpaintPipeline, dcomp, kcomp)
    out_d, out_k = _run_both(d, k, prompt="a cat", image=fx.image(), mask_image=fx.mask(), strength=strength,
                             num_inference_steps=3, height=32, width=32, output_type="np")
    fx.assert_images_close(out_k.images, out_d.images)


def test_sdxl_inpaint_denoising_window():
    dcomp, kcomp = fx.xl_components()
    d, k = _pair(kernel_sd.StableDiffusionXLInpaintPipeline, diffusers.StableDiffusionXLInpaintPipeline, dcomp, kcomp)
    out_d, out_k = _run_both(d, k, prompt="a cat", image=fx.image(), mask_image=fx.mask(), num_inference_steps=5,
                             denoising_start=0.3, denoising_end=0.8, height=32, width=32, output_type="np")
    fx.assert_images_close(out_k.images, out_d.images)


# ---------------------------------------------------------------------------- unconditional
def _unet2d():
    torch.manual_seed(0)
    d = diffusers.UNet2DModel(block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=4, sample_size=16,
                              in_channels=3, out_channels=3, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                              up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    return d, fx.ours_of(d)


@pytest.mark.parametrize("kind", ["DDPM", "DDIM"])
@pytest.mark.parametrize("output_type", ["np", "pt"])
def test_unconditional(kind, output_type):
    du, ku = _unet2d()
    name = "DDPMScheduler" if kind == "DDPM" else "DDIMScheduler"
    ds, ks = fx.scheduler_pair(name, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    d = getattr(diffusers, f"{kind}Pipeline")(unet=du, scheduler=ds)
    k = getattr(kernel_sd, f"{kind}Pipeline")(unet=ku, scheduler=ks)
    for p in (d, k):
        p.set_progress_bar_config(disable=True)
    out_d = d(batch_size=2, generator=fx.gen(0), num_inference_steps=4, output_type=output_type)
    out_k = k(batch_size=2, generator=fx.gen(0), num_inference_steps=4, output_type=output_type)
    fx.assert_images_close(out_k.images, out_d.images)
