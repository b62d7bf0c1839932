"""Issue 18's parity cases that the per-pipeline Kandinsky 2.2 files leave out: non-square sizes and scheduler swaps
for every decoder, no CFG for the ControlNet decoder, the prior with another scheduler configuration, the combined
pipelines with several prompts and their negatives / non-square sizes, the two stages chained by hand (against
Diffusers and equal to the combined pipeline), and folders both ways for the variants that had none."""

from __future__ import annotations

import functools

import numpy as np
import PIL.Image
import pytest
import torch

import diffusers
import kernel

from kandinsky_fixtures import combined_pipes, decoder_pipes, embeds, gen, max_diff, prior_pipes

TOL = 1e-3
HINT_UNET = {"in_channels": 8, "addition_embed_type": "image_hint"}
UNETS = {"KandinskyV22Pipeline": {}, "KandinskyV22Img2ImgPipeline": {},
         "KandinskyV22InpaintPipeline": {"in_channels": 9}, "KandinskyV22ControlnetPipeline": HINT_UNET,
         "KandinskyV22ControlnetImg2ImgPipeline": HINT_UNET}
#: Scheduler swaps: DDPM (fixed variance), DPM-Solver++ (multistep state) and Euler (sigma-scaled inputs).
SCHEDULERS = {"ddim": ("DDIMScheduler", {}), "ddpm": ("DDPMScheduler", {}),
              "dpmpp": ("DPMSolverMultistepScheduler", {}), "euler": ("EulerDiscreteScheduler", {})}


def _image(seed: int = 0, width: int = 32, height: int = 32) -> PIL.Image.Image:
    return PIL.Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8))


@functools.lru_cache(maxsize=None)
def _decoders(name: str, scheduler: str = "ddim"):
    cls, over = SCHEDULERS[scheduler]
    return decoder_pipes(name, scheduler=cls, unet_over=UNETS[name], **over)


def _decoder_args(name: str, batch: int = 1, height: int = 32, width: int = 32, steps: int = 3, **kwargs) -> dict:
    pos, neg = embeds(batch)
    args = dict(image_embeds=pos, negative_image_embeds=neg, height=height, width=width, num_inference_steps=steps,
                output_type="np")
    if name in ("KandinskyV22Img2ImgPipeline", "KandinskyV22ControlnetImg2ImgPipeline"):
        args.update(image=[_image(i, width, height) for i in range(batch)], num_inference_steps=max(steps, 6))
    if name == "KandinskyV22InpaintPipeline":
        mask = np.zeros((height, width), dtype=np.float32)
        mask[: height // 2, 2: width // 2] = 1
        args.update(image=[_image(i, width, height) for i in range(batch)], mask_image=[mask] * batch)
    if "Controlnet" in name:  # the hint is 8x the 2x-downscaled latents
        args.update(hint=torch.rand(batch, 3, height * 4, width * 4, generator=gen(3)))
    args.update(kwargs)
    return args


def _decode(pipe, args: dict, seed: int = 0):
    return pipe(**args, generator=gen(seed)).images


CASES = [(name, case) for name in UNETS for case in ("non_square", "ddpm", "dpmpp", "euler")
         if name != "KandinskyV22ControlnetImg2ImgPipeline" or case != "non_square"]  # non-square: its own file
CASES += [("KandinskyV22ControlnetPipeline", "no_cfg"), ("KandinskyV22ControlnetPipeline", "batch_non_square")]


@pytest.mark.parametrize("name, case", CASES, ids=[f"{n[len('KandinskyV22'):-len('Pipeline')] or 'Text'}-{c}"
                                                   for n, c in CASES])
def test_decoder_case_matches_diffusers(name, case):
    scheduler = case if case in SCHEDULERS else "ddim"
    ref, ours = _decoders(name, scheduler)
    kwargs = {"non_square": dict(height=32, width=64), "no_cfg": dict(guidance_scale=1.0),
              "batch_non_square": dict(batch=2, height=48, width=32)}.get(case, {})
    args = _decoder_args(name, **kwargs)
    b = _decode(ours, args)
    if "Img2Img" in name:  # Diffusers 0.42 resizes the image to (width, height), swapped:
        args = {**args, "height": args["width"], "width": args["height"]}  # its run at the swapped size is ours
    a = _decode(ref, args)
    assert b.shape == a.shape == (kwargs.get("batch", 1), kwargs.get("height", 32), kwargs.get("width", 32), 3)
    assert max_diff(a, b) < TOL and float(b.std()) > 0.01


def test_scheduler_swap_changes_the_result():
    # the swaps are real: another scheduler gives another picture from the same embeddings and seed
    name = "KandinskyV22Pipeline"
    args = _decoder_args(name)
    ddim, ddpm = _decode(_decoders(name)[1], args), _decode(_decoders(name, "ddpm")[1], args)
    assert max_diff(ddim, ddpm) > 1e-2


@pytest.mark.parametrize("name", ["KandinskyV22Img2ImgPipeline", "KandinskyV22ControlnetImg2ImgPipeline"])
@pytest.mark.parametrize("strength", [-0.1, 1.01, float("nan")])
def test_strength_outside_0_1_is_a_clear_error(name, strength):
    _, ours = _decoders(name)
    with pytest.raises(ValueError, match=r"strength must be a number in \[0.0, 1.0\]"):
        ours(**_decoder_args(name, strength=strength), generator=gen())


# ------------------------------------------------------------------ prior with another scheduler configuration
@functools.lru_cache(maxsize=None)
def _epsilon_priors():
    return prior_pipes(prediction_type="epsilon", variance_type="fixed_small_log", clip_sample_range=5.0)


@pytest.mark.parametrize("kwargs", [dict(prompt="a red cat"),
                                    dict(prompt=["a red cat", "a dog"], negative_prompt=["low", "bad"])],
                         ids=["default", "negatives"])
def test_prior_scheduler_swap_matches_diffusers(kwargs):
    ref, ours = _epsilon_priors()
    a = ref(**kwargs, generator=gen(3), num_inference_steps=4)
    b = ours(**kwargs, generator=gen(3), num_inference_steps=4)
    assert max_diff(a.image_embeds, b.image_embeds) < TOL
    assert max_diff(a.negative_image_embeds, b.negative_image_embeds) < TOL
    _, default = prior_pipes()
    assert max_diff(b.image_embeds, default(**kwargs, generator=gen(3), num_inference_steps=4).image_embeds) > 1e-2


# ------------------------------------------------------------------ combined pipelines and chained stages
RUN = dict(num_inference_steps=3, prior_num_inference_steps=3, output_type="np")


@functools.lru_cache(maxsize=None)
def _combined():
    return combined_pipes()


COMBINED = {
    "negatives_several_prompts": dict(prompt=["a red cat", "a dog"], negative_prompt=["low", "bad"], height=32,
                                      width=32),
    "non_square": dict(prompt="a red cat", height=32, width=64),
    "negatives_images_per_prompt_non_square": dict(prompt=["a red cat", "a dog"], negative_prompt=["low", "bad"],
                                                   num_images_per_prompt=2, height=48, width=32),
}


@pytest.mark.parametrize("case", list(COMBINED))
def test_combined_case_matches_diffusers(case):
    ref, ours = _combined()
    a = ref(**COMBINED[case], **RUN, generator=gen(2)).images
    b = ours(**COMBINED[case], **RUN, generator=gen(2)).images
    assert b.shape == a.shape and b.shape[1:3] == (COMBINED[case]["height"], COMBINED[case]["width"])
    assert max_diff(a, b) < TOL and float(b.std()) > 0.01


@pytest.mark.parametrize("guidance", [4.0, 1.0], ids=["cfg", "no_cfg"])
def test_chained_stages_match_diffusers_and_equal_the_combined_pipeline(guidance):
    ref, ours = _combined()
    prompt, negative = ["a red cat", "a dog"], ["low", "bad"]

    def chain(prior, decoder):
        g = gen(5)
        stage = prior(prompt, negative_prompt=negative, num_images_per_prompt=2, num_inference_steps=3,
                      guidance_scale=guidance, generator=g, output_type="pt")
        return decoder(image_embeds=stage.image_embeds, negative_image_embeds=stage.negative_image_embeds,
                       height=32, width=64, num_inference_steps=3, guidance_scale=guidance, generator=g,
                       output_type="np").images

    theirs = chain(ref.prior_pipe, ref.decoder_pipe)
    by_hand = chain(ours.prior_pipe, ours.decoder_pipe)
    assert by_hand.shape == (4, 32, 64, 3) and max_diff(theirs, by_hand) < TOL
    combined = ours(prompt, negative_prompt=negative, num_images_per_prompt=2, height=32, width=64,
                    guidance_scale=guidance, prior_guidance_scale=guidance, **RUN, generator=gen(5)).images
    assert max_diff(combined, by_hand) < 1e-6


def test_chained_img2img_equals_the_combined_img2img():
    ref, ours = combined_pipes("KandinskyV22Img2ImgCombinedPipeline")
    g = gen(6)
    stage = ours.prior_pipe("a red cat", num_inference_steps=3, generator=g, output_type="pt")
    by_hand = ours.decoder_pipe(image=_image(1, 64, 32), image_embeds=stage.image_embeds,
                                negative_image_embeds=stage.negative_image_embeds, height=32, width=64,
                                num_inference_steps=6, strength=0.5, generator=g, output_type="np").images
    kwargs = dict(prompt="a red cat", image=_image(1, 64, 32), height=32, width=64, num_inference_steps=6,
                  prior_num_inference_steps=3, strength=0.5, output_type="np")
    combined = ours(**kwargs, generator=gen(6)).images
    assert combined.shape == (1, 32, 64, 3) and max_diff(combined, by_hand) < 1e-6
    # Diffusers 0.42's image-to-image decoder swaps height and width when it resizes the image: swapped, it is ours
    assert max_diff(ref(**{**kwargs, "height": 64, "width": 32}, generator=gen(6)).images, combined) < TOL


def test_inpaint_combined_negatives_several_prompts_non_square_matches_diffusers():
    ref, ours = combined_pipes("KandinskyV22InpaintCombinedPipeline", unet_over={"in_channels": 9})
    mask = np.zeros((32, 64), dtype=np.float32)
    mask[:16, 8:40] = 1
    kwargs = dict(prompt=["a red cat", "a dog"], negative_prompt=["low", "bad"], image=[_image(1, 64, 32)],
                  mask_image=[mask], height=32, width=64, **RUN)
    a, b = ref(**kwargs, generator=gen(2)).images, ours(**kwargs, generator=gen(2)).images
    assert b.shape == a.shape == (2, 32, 64, 3) and max_diff(a, b) < TOL and float(b.std()) > 0.01


# ------------------------------------------------------------------ folders both ways for the remaining variants
@pytest.mark.parametrize("name", ["KandinskyV22Img2ImgPipeline", "KandinskyV22ControlnetPipeline"])
def test_decoder_variant_folders_both_ways(name, tmp_path):
    ref, ours = _decoders(name)
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    back = getattr(diffusers, name).from_pretrained(tmp_path / "ours")
    mine = kernel.load(str(tmp_path / "theirs"))
    assert type(mine).__name__ == name and type(mine).__module__.startswith("kernel_kandinsky")
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    args = _decoder_args(name, steps=2)
    assert max_diff(_decode(back, args), _decode(mine, args)) < TOL


@pytest.mark.parametrize("name", ["KandinskyV22Img2ImgCombinedPipeline", "KandinskyV22InpaintCombinedPipeline"])
def test_combined_variant_folders_both_ways(name, tmp_path):
    ref, ours = combined_pipes(name, unet_over={"in_channels": 9} if "Inpaint" in name else None)
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    back = getattr(diffusers, name).from_pretrained(tmp_path / "ours")
    mine = kernel.load(str(tmp_path / "theirs"))
    assert type(mine).__name__ == name and type(mine).__module__.startswith("kernel_kandinsky")
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a cat", image=_image(2), height=32, width=32, num_inference_steps=2,
                  prior_num_inference_steps=2, output_type="np")
    if "Inpaint" in name:
        mask = np.zeros((32, 32), dtype=np.float32)
        mask[:16] = 1
        kwargs["mask_image"] = mask
    else:
        kwargs.update(strength=0.9)
    assert max_diff(back(**kwargs, generator=gen()).images, mine(**kwargs, generator=gen()).images) < TOL
