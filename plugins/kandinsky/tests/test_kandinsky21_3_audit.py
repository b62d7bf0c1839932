"""Issue 18's parity cases that the Kandinsky 2.1 and 3 files leave out: non-square sizes and scheduler swaps for the
2.1 decoders and both Kandinsky 3 pipelines, the 2.1 prior and combined pipeline with several prompts and their
negatives, and the 2.1 stages chained by hand (against Diffusers and equal to the combined pipeline)."""

from __future__ import annotations

import functools

import numpy as np
import PIL.Image
import pytest
import torch

import diffusers
import kernel

from kandinsky21_fixtures import combined21_pipes, decoder21_pipes, prior21_pipes
from kandinsky_fixtures import embeds, gen, max_diff

TOL = 1e-3
UNETS = {"KandinskyPipeline": None, "KandinskyImg2ImgPipeline": None, "KandinskyInpaintPipeline": (("in_channels", 9),)}
SCHEDULERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "dpmpp": "DPMSolverMultistepScheduler",
              "euler": "EulerDiscreteScheduler"}


def _image(seed: int = 0, width: int = 32, height: int = 32) -> PIL.Image.Image:
    return PIL.Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8))


@functools.lru_cache(maxsize=None)
def _decoders(name: str, scheduler: str = "ddim"):
    return decoder21_pipes(name, scheduler=SCHEDULERS[scheduler], unet_over=UNETS[name])


def _args(name: str, prompt=("a red cat", "a dog"), height: int = 32, width: int = 32, **kwargs) -> dict:
    prompt = list(prompt)
    pos, neg = embeds(len(prompt))
    args = dict(prompt=prompt, image_embeds=pos, negative_image_embeds=neg, negative_prompt=["low", "bad"],
                height=height, width=width, num_inference_steps=3, output_type="np")
    if name == "KandinskyImg2ImgPipeline":
        args.update(image=[_image(i, width, height) for i in range(len(prompt))], num_inference_steps=6,
                    strength=0.5)
    if name == "KandinskyInpaintPipeline":
        mask = np.zeros((height, width), dtype=np.float32)
        mask[: height // 2, 2: width // 2] = 1
        args.update(image=[_image(i, width, height) for i in range(len(prompt))], mask_image=[mask] * len(prompt))
    args.update(kwargs)
    return args


#: Diffusers 0.42's 2.1 image-to-image cannot run these (see test_decoder21_img2img_where_diffusers_cannot).
CASES = [(name, case) for name in UNETS for case in ("non_square", "ddpm", "dpmpp", "euler")
         if name != "KandinskyImg2ImgPipeline" or case in ("ddpm", "dpmpp")]


@pytest.mark.parametrize("name, case", CASES, ids=[f"{n[len('Kandinsky'):-len('Pipeline')] or 'Text'}-{c}"
                                                   for n, c in CASES])
def test_decoder21_case_matches_diffusers(name, case):
    ref, ours = _decoders(name, case if case in SCHEDULERS else "ddim")
    args = _args(name, **(dict(height=32, width=64) if case == "non_square" else {}))
    b = ours(**args, generator=gen()).images
    if name == "KandinskyImg2ImgPipeline":  # Diffusers 0.42 resizes the image to (width, height), swapped:
        args = {**args, "height": args["width"], "width": args["height"]}  # its run at the swapped size is ours
    a = ref(**args, generator=gen()).images
    assert b.shape == a.shape == (2, 32, 64 if case == "non_square" else 32, 3)
    assert max_diff(a, b) < TOL and float(b.std()) > 0.01


def test_decoder21_img2img_where_diffusers_cannot():
    """Diffusers 0.42's 2.1 image-to-image fails on non-square sizes (it resizes the image to (width, height) but
    noises a (height, width) grid) and on Euler (its own add_noise indexes betas by float timesteps); ours runs
    both, keeps the requested size, and on a square size is Diffusers' result (test_img2img21.py)."""
    ref, ours = _decoders("KandinskyImg2ImgPipeline")
    args = _args("KandinskyImg2ImgPipeline", height=32, width=64)
    with pytest.raises(ValueError, match="Unexpected latents shape"):
        ref(**args, generator=gen())
    wide = ours(**args, generator=gen()).images
    assert wide.shape == (2, 32, 64, 3) and float(wide.std()) > 0.01
    other = ours(**{**args, "image": [_image(5, 64, 32), _image(6, 64, 32)]}, generator=gen()).images
    assert max_diff(wide, other) > 1e-2  # the image is read at the requested size
    ref, ours = _decoders("KandinskyImg2ImgPipeline", "euler")
    with pytest.raises(IndexError):
        ref(**_args("KandinskyImg2ImgPipeline"), generator=gen())
    euler = ours(**_args("KandinskyImg2ImgPipeline"), generator=gen()).images
    assert euler.shape == (2, 32, 32, 3) and np.isfinite(euler).all() and float(euler.std()) > 0.01


def test_prior21_negative_prompts_with_several_prompts():
    ref, ours = prior21_pipes()
    kwargs = dict(prompt=["a red cat", "a dog"], negative_prompt=["low", "bad"], num_images_per_prompt=2,
                  num_inference_steps=3)
    a, b = ref(**kwargs, generator=gen(3)), ours(**kwargs, generator=gen(3))
    assert b.image_embeds.shape == (4, 32)
    assert max_diff(a.image_embeds, b.image_embeds) < TOL
    assert max_diff(a.negative_image_embeds, b.negative_image_embeds) < TOL


def test_prior21_scheduler_swap_matches_diffusers():
    import kernel as _kernel

    ref, ours = prior21_pipes()
    config = {**dict(ref.scheduler.config), "prediction_type": "epsilon", "clip_sample_range": 5.0}
    ref = diffusers.KandinskyPriorPipeline(**{**ref.components, "scheduler": diffusers.UnCLIPScheduler(**config)})
    ours = type(ours)(**{**ours.components, "scheduler": _kernel.component("UnCLIPScheduler").from_config(config)})
    for pipe in (ref, ours):
        pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt=["a red cat", "a dog"], negative_prompt=["low", "bad"], num_inference_steps=4)
    a, b = ref(**kwargs, generator=gen(3)), ours(**kwargs, generator=gen(3))
    assert max_diff(a.image_embeds, b.image_embeds) < TOL
    assert max_diff(a.negative_image_embeds, b.negative_image_embeds) < TOL
    assert max_diff(b.image_embeds, prior21_pipes()[1](**kwargs, generator=gen(3)).image_embeds) > 1e-2


@pytest.mark.parametrize("strength", [-0.1, 1.01])
def test_img2img_strength_outside_0_1_is_a_clear_error(strength):
    from kandinsky3_fixtures import picture

    _, ours = _decoders("KandinskyImg2ImgPipeline")
    with pytest.raises(ValueError, match="strength"):
        ours(**_args("KandinskyImg2ImgPipeline", strength=strength), generator=gen())
    _, k3 = _k3(True, "ddim")
    with pytest.raises(ValueError, match="strength"):
        k3(prompt="a cat", image=picture(), strength=strength, num_inference_steps=2)


@functools.lru_cache(maxsize=None)
def _combined():
    return combined21_pipes()


RUN = dict(num_inference_steps=3, prior_num_inference_steps=3, output_type="np")
COMBINED = {
    "negatives_several_prompts": dict(prompt=["a red cat", "a dog"], negative_prompt=["low", "bad"], height=32,
                                      width=32),
    "non_square": dict(prompt="a red cat", height=48, width=32),
    "negatives_no_cfg_non_square": dict(prompt=["a red cat", "a dog"], negative_prompt=["low", "bad"], height=32,
                                        width=64, guidance_scale=1.0, prior_guidance_scale=1.0),
}


@pytest.mark.parametrize("case", list(COMBINED))
def test_combined21_case_matches_diffusers(case):
    ref, ours = _combined()
    a, b = (p(**COMBINED[case], **RUN, generator=gen(2)).images for p in (ref, ours))
    assert b.shape == a.shape and b.shape[1:3] == (COMBINED[case]["height"], COMBINED[case]["width"])
    assert max_diff(a, b) < TOL and float(b.std()) > 0.01


def test_chained21_stages_match_diffusers_and_equal_the_combined_pipeline():
    ref, ours = _combined()
    prompt, negative = ["a red cat", "a dog"], ["low", "bad"]

    def chain(prior, decoder):
        g = gen(5)
        stage = prior(prompt, negative_prompt=negative, num_images_per_prompt=2, num_inference_steps=3, generator=g,
                      output_type="pt")
        # as Diffusers' combined pipeline: the decoder reads the prompt list repeated whole, without negatives
        return decoder(prompt * 2, image_embeds=stage.image_embeds, negative_image_embeds=stage.negative_image_embeds,
                       height=32, width=64, num_inference_steps=3, generator=g, output_type="np").images

    theirs, by_hand = chain(ref.prior_pipe, ref.decoder_pipe), chain(ours.prior_pipe, ours.decoder_pipe)
    assert by_hand.shape == (4, 32, 64, 3) and max_diff(theirs, by_hand) < TOL
    combined = ours(prompt, negative_prompt=negative, num_images_per_prompt=2, height=32, width=64, **RUN,
                    generator=gen(5)).images
    assert max_diff(combined, by_hand) < 1e-6


# ------------------------------------------------------------------ Kandinsky 3: scheduler swaps
@functools.lru_cache(maxsize=None)
def _k3(img2img: bool, scheduler: str):
    from kandinsky3_fixtures import img2img_folder, folder

    path, ref = (img2img_folder if img2img else folder)()
    ours = kernel.load(path)
    ref = type(ref)(**ref.components)
    config = dict(ref.scheduler.config)
    ref.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(config)
    ours.scheduler = kernel.component(SCHEDULERS[scheduler]).from_config(config)
    for pipe in (ref, ours):
        pipe.set_progress_bar_config(disable=True)
    return ref, ours


@pytest.mark.parametrize("img2img", [False, True], ids=["text", "img2img"])
@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp", "euler"])
def test_kandinsky3_scheduler_swap_matches_diffusers(img2img, scheduler):
    from kandinsky3_fixtures import picture

    ref, ours = _k3(img2img, scheduler)
    kwargs = dict(prompt=["a cat", "The Dog"], negative_prompt=["bad", "ugly"], num_inference_steps=3, output_type="np")
    kwargs.update(dict(image=[picture(0), picture(1)], strength=0.8, num_inference_steps=4) if img2img else
                  dict(height=16, width=32))
    a, b = (p(**kwargs, generator=gen()).images for p in (ref, ours))
    assert b.shape == a.shape and max_diff(a, b) < TOL and float(b.std()) > 0.01
