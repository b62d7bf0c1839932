"""kernel-sd: bad input, memory switches, save/load both ways, auto-pipelines, prompt extensions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import sd_fixtures as fx  # noqa: E402

import diffusers  # noqa: E402
import kernel  # noqa: E402
import kernel_sd  # noqa: E402
from kernel_clip import PromptOptions, encode_prompt, encode_prompt_xl  # noqa: E402
from sd_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = dict(num_inference_steps=2, output_type="np")


def _ours(cls, comps):
    pipe = cls(**comps)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd():
    return _ours(kernel_sd.StableDiffusionPipeline, fx.sd_components()[1])


@pytest.fixture(scope="module")
def sd_inpaint():
    return _ours(kernel_sd.StableDiffusionInpaintPipeline, fx.sd_components()[1])


@pytest.fixture(scope="module")
def sd_img2img():
    return _ours(kernel_sd.StableDiffusionImg2ImgPipeline, fx.sd_components()[1])


@pytest.fixture(scope="module")
def xl():
    return _ours(kernel_sd.StableDiffusionXLPipeline, fx.xl_components()[1])


@pytest.fixture(scope="module")
def xl_img2img():
    return _ours(kernel_sd.StableDiffusionXLImg2ImgPipeline, fx.xl_components()[1])


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw, match", [
    (dict(prompt="a", height=33, width=32), "height"),
    (dict(prompt="a", height=32, width=31), "width"),
    (dict(prompt="a", prompt_embeds=torch.zeros(1, 77, 32), height=32, width=32), "prompt_embeds"),
    (dict(height=32, width=32), "prompt"),
    (dict(prompt=["a", "b"], negative_prompt=["x"], height=32, width=32), "negative_prompt"),
    (dict(prompt="a", generator=[torch.Generator()] * 3, height=32, width=32), "generator"),
    (dict(prompt="a", callback_on_step_end_tensor_inputs=["latents", "nope"], height=32, width=32),
     "callback_on_step_end_tensor_inputs"),
    (dict(prompt="a", num_images_per_prompt=0, height=32, width=32), "num_images_per_prompt"),
    (dict(prompt="a", num_inference_steps=0, height=32, width=32), "num_inference_steps"),
    (dict(prompt_embeds=torch.zeros(1, 77, 32), negative_prompt_embeds=torch.zeros(1, 70, 32), height=32, width=32),
     "negative_prompt_embeds"),
])
def test_sd_bad_input(sd, kw, match):
    with pytest.raises(ValueError, match=match):
        sd(**kw)


@pytest.mark.parametrize("strength", [-0.1, 1.5, "x"])
def test_img2img_strength_range(sd_img2img, strength):
    with pytest.raises(ValueError, match="strength"):
        sd_img2img(prompt="a", image=fx.image(), strength=strength)


def test_strength_too_small(sd_img2img, sd_inpaint):
    with pytest.raises(ValueError, match="strength"):
        sd_img2img(prompt="a", image=fx.image(), strength=0.1, num_inference_steps=4)
    with pytest.raises(ValueError, match="strength"):
        sd_inpaint(prompt="a", image=fx.image(), mask_image=fx.mask(), strength=0.1, num_inference_steps=4,
                   height=32, width=32)


def test_inpaint_bad_input(sd_inpaint):
    with pytest.raises(ValueError, match="mask_image is 32x48"):
        sd_inpaint(prompt="a", image=fx.image(32, 32), mask_image=fx.mask(48, 32), height=32, width=32)
    with pytest.raises(ValueError, match="mask_image"):
        sd_inpaint(prompt="a", image=fx.image(), height=32, width=32)
    with pytest.raises(ValueError, match="padding_mask_crop"):
        sd_inpaint(prompt="a", image=fx.image(), mask_image=fx.mask(), padding_mask_crop=4, output_type="np",
                   height=32, width=32)
    with pytest.raises(ValueError, match="padding_mask_crop"):
        sd_inpaint(prompt="a", image=torch.rand(1, 3, 32, 32), mask_image=fx.mask(), padding_mask_crop=4,
                   height=32, width=32)


def test_xl_bad_input(xl, xl_img2img):
    with pytest.raises(ValueError, match="denoising_start"):
        xl_img2img(prompt="a", image=fx.image(), denoising_start=0.8, denoising_end=0.5)
    with pytest.raises(ValueError, match="denoising_end"):
        xl(prompt="a", denoising_end=1.5, height=32, width=32)
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        xl(prompt_embeds=torch.zeros(1, 77, 64), height=32, width=32)
    with pytest.raises(ValueError, match="prompt_2"):
        xl(prompt_2="b", prompt_embeds=torch.zeros(1, 77, 64), pooled_prompt_embeds=torch.zeros(1, 32),
           height=32, width=32)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        xl(prompt="a", callback_on_step_end_tensor_inputs=["mask"], height=32, width=32)
    with pytest.raises(ValueError, match="requires_aesthetics_score"):
        # a base (target-size) UNet cannot take an aesthetic score
        refiner = _ours(kernel_sd.StableDiffusionXLImg2ImgPipeline,
                        dict(fx.xl_components()[1], requires_aesthetics_score=True))
        refiner(prompt="a", image=fx.image(), strength=0.5, num_inference_steps=4, output_type="np")


def test_unconditional_bad_input():
    du = diffusers.UNet2DModel(sample_size=8, block_out_channels=(4, 8), norm_num_groups=4, layers_per_block=1,
                               down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = kernel_sd.DDPMPipeline(unet=fx.ours_of(du), scheduler=fx.scheduler_pair("DDPMScheduler")[1])
    with pytest.raises(ValueError, match="batch_size"):
        pipe(batch_size=0)
    with pytest.raises(ValueError, match="output_type"):
        pipe(output_type="jpeg", num_inference_steps=1)
    with pytest.raises(ValueError, match="generator"):
        pipe(batch_size=2, generator=[torch.Generator()], num_inference_steps=1)


# ---------------------------------------------------------------------------- memory switches
def test_memory_switches_same_image(sd):
    kw = dict(prompt=["a cat", "dog"], height=64, width=64, **FAST)
    ref = sd(generator=fx.gen(0), **kw).images
    sd.enable_vae_slicing()
    sliced = sd(generator=fx.gen(0), **kw).images
    sd.disable_vae_slicing()
    np.testing.assert_allclose(sliced, ref, atol=1e-5)
    sd.enable_attention_slicing(1)
    attn = sd(generator=fx.gen(0), **kw).images
    sd.disable_attention_slicing()
    np.testing.assert_allclose(attn, ref, atol=1e-4)
    sd.enable_vae_tiling()
    assert sd.vae.use_tiling
    tiled = sd(generator=fx.gen(0), **kw).images
    sd.disable_vae_tiling()
    # Tiles are decoded separately and blended at the seams: close, not equal (tolerance 0.1 on [0, 1]).
    assert np.abs(tiled - ref).mean() < 0.05 and np.abs(tiled - ref).max() < 0.5
    again = sd(generator=fx.gen(0), **kw).images
    np.testing.assert_allclose(again, ref, atol=1e-6)


def test_upcast_and_model_offload_on_cpu(xl):
    ref = xl(prompt="a cat", height=32, width=32, generator=fx.gen(0), **FAST).images
    xl.upcast_vae()
    assert xl.vae.dtype == torch.float32
    xl.enable_model_cpu_offload(device="cpu")
    try:
        out = xl(prompt="a cat", height=32, width=32, generator=fx.gen(0), **FAST).images
    finally:
        xl.remove_all_hooks()
    np.testing.assert_allclose(out, ref, atol=1e-5)


# ---------------------------------------------------------------------------- save / load
def test_diffusers_folder_loads_here(tmp_path):
    dcomp, _ = fx.sd_components()
    d = diffusers.StableDiffusionPipeline(**dcomp)
    d.set_progress_bar_config(disable=True)
    d.save_pretrained(tmp_path)
    kw = dict(prompt="a cat", height=32, width=32, **FAST)
    expected = d(generator=fx.gen(0), **kw).images
    for pipe in (kernel.load(str(tmp_path)), kernel_sd.StableDiffusionPipeline.from_pretrained(tmp_path),
                 kernel.load("sd", str(tmp_path))):
        assert type(pipe) is kernel_sd.StableDiffusionPipeline
        assert type(pipe.unet).__module__.startswith("kernel_unet")
        pipe.set_progress_bar_config(disable=True)
        fx.assert_images_close(pipe(generator=fx.gen(0), **kw).images, expected)


def test_our_folder_loads_in_diffusers(tmp_path):
    _, kcomp = fx.sd_components("DPMSolverMultistepScheduler")
    ours = _ours(kernel_sd.StableDiffusionPipeline, kcomp)
    ours.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    d = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path)
    d.set_progress_bar_config(disable=True)
    kw = dict(prompt="a cat", height=32, width=32, **FAST)
    fx.assert_images_close(ours(generator=fx.gen(0), **kw).images, d(generator=fx.gen(0), **kw).images)


def test_sdxl_round_trip(tmp_path):
    dcomp, _ = fx.xl_components()
    d = diffusers.StableDiffusionXLPipeline(**dcomp)
    d.set_progress_bar_config(disable=True)
    d.save_pretrained(tmp_path / "d")
    kw = dict(prompt="a cat", height=32, width=32, **FAST)
    expected = d(generator=fx.gen(0), **kw).images
    ours = kernel.load("sdxl", str(tmp_path / "d"))
    ours.set_progress_bar_config(disable=True)
    fx.assert_images_close(ours(generator=fx.gen(0), **kw).images, expected)
    ours.save_pretrained(tmp_path / "k")
    back = diffusers.StableDiffusionXLPipeline.from_pretrained(tmp_path / "k")
    back.set_progress_bar_config(disable=True)
    fx.assert_images_close(back(generator=fx.gen(0), **kw).images, expected)


# ---------------------------------------------------------------------------- auto pipelines
def test_auto_pipelines(tmp_path):
    _, kcomp = fx.sd_components()
    _ours(kernel_sd.StableDiffusionPipeline, kcomp).save_pretrained(tmp_path)
    t2i = kernel_sd.AutoPipelineForText2Image.from_pretrained(tmp_path)
    assert type(t2i) is kernel_sd.StableDiffusionPipeline
    i2i = kernel_sd.AutoPipelineForImage2Image.from_pretrained(tmp_path)
    assert type(i2i) is kernel_sd.StableDiffusionImg2ImgPipeline
    inp = kernel_sd.AutoPipelineForInpainting.from_pipe(i2i)
    assert type(inp) is kernel_sd.StableDiffusionInpaintPipeline
    assert inp.unet is i2i.unet and inp.vae is i2i.vae  # shared, not copied
    back = kernel_sd.AutoPipelineForText2Image.from_pipe(inp)
    assert type(back) is kernel_sd.StableDiffusionPipeline
    xl = _ours(kernel_sd.StableDiffusionXLPipeline, fx.xl_components()[1])
    assert type(kernel_sd.AutoPipelineForImage2Image.from_pipe(xl)) is kernel_sd.StableDiffusionXLImg2ImgPipeline
    assert type(kernel_sd.AutoPipelineForInpainting.from_pipe(xl)) is kernel_sd.StableDiffusionXLInpaintPipeline
    with pytest.raises(TypeError, match="from_pretrained"):
        kernel_sd.AutoPipelineForText2Image()


def test_aliases_and_components():
    assert kernel.component("sd") is kernel_sd.StableDiffusionPipeline
    assert kernel.component("sd2") is kernel_sd.StableDiffusionPipeline
    assert kernel.component("sdxl") is kernel_sd.StableDiffusionXLPipeline
    assert kernel.component("sdxl-refiner") is kernel_sd.StableDiffusionXLImg2ImgPipeline
    for name in kernel_sd.__all__:
        if name.endswith("Pipeline") or name.startswith("AutoPipeline"):
            assert kernel.component(name) is getattr(kernel_sd, name)


def test_outputs_are_base_outputs(sd):
    from kernel.outputs import BaseOutput

    out = sd(prompt="a", height=32, width=32, **FAST)
    assert isinstance(out, BaseOutput) and out[0] is out.images and out.nsfw_content_detected is None


# ---------------------------------------------------------------------------- prompt extensions
LONG = "a cat sitting on the dog in the garden " * 8


def test_long_prompt_and_emphasis_in_pipelines():
    """The switched-on pipeline equals Diffusers fed with kernel_clip's embeddings."""
    dcomp, kcomp = fx.sd_components()
    d = diffusers.StableDiffusionPipeline(**dcomp)
    d.set_progress_bar_config(disable=True)
    ours = _ours(kernel_sd.StableDiffusionPipeline, kcomp)
    ours.set_prompt_options(long_prompts=True, emphasis=True)
    prompt, negative = "(" + LONG + ":1.2) [dog]", "blurry"
    opts = PromptOptions(long_prompts=True, emphasis=True)
    pe, ne = encode_prompt(kcomp["tokenizer"], kcomp["text_encoder"], prompt, "cpu", 1, True, negative, options=opts)
    assert pe.shape[1] == 3 * 77
    kw = dict(height=32, width=32, **FAST)
    fx.assert_images_close(ours(prompt=prompt, negative_prompt=negative, generator=fx.gen(0), **kw).images,
                           d(prompt_embeds=pe, negative_prompt_embeds=ne, generator=fx.gen(0), **kw).images)

    dcomp, kcomp = fx.xl_components()
    d = diffusers.StableDiffusionXLPipeline(**dcomp)
    d.set_progress_bar_config(disable=True)
    ours = _ours(kernel_sd.StableDiffusionXLPipeline, kcomp)
    ours.set_prompt_options(long_prompts=True)
    embeds = encode_prompt_xl([kcomp["tokenizer"], kcomp["tokenizer_2"]],
                              [kcomp["text_encoder"], kcomp["text_encoder_2"]], LONG, device="cpu", options=opts)
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    ours.set_prompt_options(emphasis=True)
    fx.assert_images_close(ours(prompt=LONG, generator=fx.gen(0), **kw).images,
                           d(generator=fx.gen(0), **dict(zip(names, embeds)), **kw).images)


# ---------------------------------------------------------------------------- found by trying it as a user
def test_inpaint_takes_numpy_image_and_mask(sd_inpaint):
    """Arrays used to crash the size check ("'int' object is not iterable"); they give the PIL result."""
    image, mask = fx.image(32, 32), fx.mask(32, 32)
    as_pil = sd_inpaint(prompt="a", image=image, mask_image=mask, num_inference_steps=2, generator=fx.gen(0),
                        output_type="np").images
    as_np = sd_inpaint(prompt="a", image=np.asarray(image, dtype=np.float32)[None] / 255,
                       mask_image=np.asarray(mask, dtype=np.float32)[None, :, :, None] / 255,
                       num_inference_steps=2, generator=fx.gen(0), output_type="np").images
    np.testing.assert_allclose(as_np, as_pil, atol=1e-5)
    with pytest.raises(ValueError, match="mask_image is 32x48"):
        sd_inpaint(prompt="a", image=np.zeros((32, 32, 3)), mask_image=np.zeros((32, 48)), num_inference_steps=2)


@pytest.mark.parametrize("shape", [(1, 4, 3, 3), (2, 4, 16, 16), (1, 3, 16, 16)])
def test_latents_of_the_wrong_shape_are_refused(sd, shape):
    with pytest.raises(ValueError, match=r"latents must have shape \(1, 4, 16, 16\)"):
        sd(prompt="a", height=32, width=32, latents=torch.zeros(shape), num_inference_steps=2)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_guidance_is_refused(sd, xl, value):
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        sd(prompt="a", height=32, width=32, guidance_scale=value, num_inference_steps=2)
    with pytest.raises(ValueError, match="guidance_rescale must be a finite number"):
        xl(prompt="a", height=32, width=32, guidance_rescale=value, num_inference_steps=2)


def test_family_mismatch_fails_at_load(tmp_path):
    d, _ = fx.sd_components()
    diffusers.StableDiffusionPipeline(**d).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"holds a StableDiffusionPipeline \(stable-diffusion family\), which "
                                         r"'sdxl'.*cannot run"):
        kernel.load("sdxl", tmp_path)
    assert type(kernel.load("sd", tmp_path)).__name__ == "StableDiffusionPipeline"
    if not torch.cuda.is_available():  # "balanced" spreads components over GPUs (kernel-distributed)
        with pytest.raises(ValueError, match="device_map='balanced'.*(no CUDA device|kernel-distributed)"):
            kernel.load(tmp_path, device_map="balanced")


def test_every_task_uses_the_one_loop(sd, sd_img2img, sd_inpaint, monkeypatch):
    """The kernel's Engine.denoise runs every task: a guider that records its steps sees them all."""
    from kernel.engine import Engine

    seen = []
    original = Engine.denoise

    def spy(self, latents, timesteps, *args, **kwargs):
        seen.append((type(self).__name__, len(timesteps)))
        return original(self, latents, timesteps, *args, **kwargs)

    monkeypatch.setattr(Engine, "denoise", spy)
    sd(prompt="a", height=32, width=32, num_inference_steps=2)
    sd_img2img(prompt="a", image=fx.image(), num_inference_steps=4, strength=0.5)
    sd_inpaint(prompt="a", image=fx.image(), mask_image=fx.mask(), num_inference_steps=2)
    assert seen == [("StableDiffusionPipeline", 2), ("StableDiffusionImg2ImgPipeline", 2),
                    ("StableDiffusionInpaintPipeline", 2)]
