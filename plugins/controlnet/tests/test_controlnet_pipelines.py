"""Every ControlNet pipeline against Diffusers' (fp32, 1e-3): scales, guess mode, windows, batches, several
nets, image-to-image and inpainting, PAG; and the call's bad input."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kernel

sys.path.insert(0, str(Path(__file__).parent))
import cn_fixtures as cf  # noqa: E402
from cn_fixtures import fx, single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 32


@functools.lru_cache(maxsize=None)
def _parts(xl: bool, nets: int = 1, inpaint_unet: bool = False):
    over = {"in_channels": 9} if inpaint_unet else None
    theirs, ours = fx.xl_components(unet_over=over) if xl else fx.sd_components(unet_over=over)
    pairs = [cf.controlnet(seed=5 + k, xl=xl) for k in range(nets)]
    theirs["controlnet"] = pairs[0][0] if nets == 1 else [p[0] for p in pairs]
    ours["controlnet"] = pairs[0][1] if nets == 1 else [p[1] for p in pairs]
    return theirs, ours


def _pair(name: str, xl: bool = False, nets: int = 1, inpaint_unet: bool = False, **extra):
    theirs_parts, ours_parts = _parts(xl, nets, inpaint_unet)
    theirs = getattr(diffusers, name)(**theirs_parts, **extra)
    ours = kernel.component(name)(**ours_parts, **extra)
    for p in (theirs, ours):
        p.set_progress_bar_config(disable=True)
    return theirs, ours


def _inputs(task: str, nets: int = 1, **kwargs):
    control = [cf.control_image(SIZE, seed=7 + k) for k in range(nets)]
    control = control[0] if nets == 1 else control
    call = dict(prompt="a photo of a cat", num_inference_steps=3, output_type="np")
    if task == "text":
        call["image"] = control
    else:
        call.update(image=fx.image(SIZE, SIZE, seed=1), control_image=control, strength=0.7)
    if task == "inpaint":
        call["mask_image"] = fx.mask(SIZE, SIZE)
    return {**call, **kwargs}


def _same(theirs, ours, **call):
    a = theirs(generator=fx.gen(0), **call).images
    b = ours(generator=fx.gen(0), **call).images
    fx.assert_images_close(a, b, atol=1e-3)
    return b


SD_TEXT_CASES = {
    "default": {},
    "scale": dict(controlnet_conditioning_scale=0.3, negative_prompt="blurry"),
    "guess-mode": dict(guess_mode=True, guidance_scale=4.0),
    "guess-mode-no-cfg": dict(guess_mode=True, guidance_scale=1.0),
    "window": dict(control_guidance_start=0.3, control_guidance_end=0.7),
    "batch": dict(prompt=["a cat", "a dog"], num_images_per_prompt=2,
                  image=[cf.control_image(SIZE, seed=1), cf.control_image(SIZE, seed=2)]),
}


@pytest.mark.parametrize("case", list(SD_TEXT_CASES))
def test_sd_text_to_image_matches_diffusers(case):
    theirs, ours = _pair("StableDiffusionControlNetPipeline")
    _same(theirs, ours, **_inputs("text", **SD_TEXT_CASES[case]))


def test_control_changes_the_image_and_scale_zero_is_the_plain_pipeline():
    _, ours = _pair("StableDiffusionControlNetPipeline")
    plain = kernel.component("StableDiffusionPipeline")(**{k: v for k, v in _parts(False)[1].items()
                                                          if k != "controlnet"})
    plain.set_progress_bar_config(disable=True)
    call = _inputs("text")
    controlled = ours(generator=fx.gen(0), **call).images
    off = ours(generator=fx.gen(0), **{**call, "controlnet_conditioning_scale": 0.0}).images
    base = plain(generator=fx.gen(0), height=SIZE, width=SIZE,
                 **{k: v for k, v in call.items() if k != "image"}).images
    assert np.abs(controlled - base).max() > 0.05  # the randomised ControlNet does steer the image
    np.testing.assert_array_equal(off, base)


@pytest.mark.parametrize("task,name", [("image", "StableDiffusionControlNetImg2ImgPipeline"),
                                       ("inpaint", "StableDiffusionControlNetInpaintPipeline")])
@pytest.mark.parametrize("case", [{}, dict(guess_mode=True, controlnet_conditioning_scale=0.9)], ids=["default", "guess"])
def test_sd_image_tasks_match_diffusers(task, name, case):
    theirs, ours = _pair(name)
    _same(theirs, ours, **_inputs(task, **case))


def test_sd_inpainting_unet_sees_mask_channels_and_controlnet_sees_latents():
    """A 9-channel inpainting UNet: the ControlNet takes the 4 latent channels only, as in Diffusers."""
    theirs, ours = _pair("StableDiffusionControlNetInpaintPipeline", inpaint_unet=True)
    _same(theirs, ours, **_inputs("inpaint", strength=1.0))


XL_CASES = {
    "text": ("StableDiffusionXLControlNetPipeline", dict(negative_prompt="blurry", original_size=(40, 40))),
    "text-guess": ("StableDiffusionXLControlNetPipeline", dict(guess_mode=True)),
    "text-window-batch": ("StableDiffusionXLControlNetPipeline",
                          dict(control_guidance_end=0.6, prompt=["a cat", "a dog"], num_images_per_prompt=2)),
    # the window counts the whole schedule, not the part before denoising_end
    "text-denoising-end-window": ("StableDiffusionXLControlNetPipeline",
                                  dict(num_inference_steps=6, denoising_end=0.5, control_guidance_end=0.4)),
    "image": ("StableDiffusionXLControlNetImg2ImgPipeline", {}),
    "image-guess": ("StableDiffusionXLControlNetImg2ImgPipeline", dict(guess_mode=True, guidance_scale=3.0)),
    "inpaint": ("StableDiffusionXLControlNetInpaintPipeline", dict(controlnet_conditioning_scale=0.7)),
    "inpaint-guess": ("StableDiffusionXLControlNetInpaintPipeline", dict(guess_mode=True, control_guidance_start=0.3)),
    "inpaint-denoising-end": ("StableDiffusionXLControlNetInpaintPipeline",
                              dict(num_inference_steps=8, strength=0.9, denoising_end=0.6, control_guidance_start=0.2,
                                   control_guidance_end=0.5)),
}


@pytest.mark.parametrize("case", list(XL_CASES))
def test_sdxl_matches_diffusers(case):
    name, call = XL_CASES[case]
    task = "text" if "Img2Img" not in name and "Inpaint" not in name else ("image" if "Img2Img" in name else "inpaint")
    theirs, ours = _pair(name, xl=True)
    _same(theirs, ours, **_inputs(task, **call))


MULTI_CASES = {
    "scales-windows": dict(controlnet_conditioning_scale=[0.5, 1.2], control_guidance_start=[0.0, 0.4],
                           control_guidance_end=[0.6, 1.0]),
    "guess-batch": dict(guess_mode=True, controlnet_conditioning_scale=0.8, num_images_per_prompt=2),
}


@pytest.mark.parametrize("case", list(MULTI_CASES))
def test_multi_controlnet_sd_matches_diffusers(case):
    theirs, ours = _pair("StableDiffusionControlNetPipeline", nets=2)
    assert type(ours.controlnet).__name__ == "MultiControlNetModel"
    _same(theirs, ours, **_inputs("text", nets=2, **MULTI_CASES[case]))


def test_multi_controlnet_sdxl_image_to_image_matches_diffusers():
    theirs, ours = _pair("StableDiffusionXLControlNetImg2ImgPipeline", xl=True, nets=2)
    _same(theirs, ours, **_inputs("image", nets=2, controlnet_conditioning_scale=[0.6, 0.9],
                                  control_guidance_end=[1.0, 0.5]))


@pytest.mark.parametrize("name,xl", [("StableDiffusionControlNetPAGPipeline", False),
                                     ("StableDiffusionXLControlNetPAGPipeline", True)])
@pytest.mark.parametrize("case", [dict(pag_scale=3.0), dict(pag_scale=2.0, guidance_scale=1.0,
                                                            control_guidance_end=0.7)], ids=["cfg", "no-cfg-window"])
def test_pag_controlnet_matches_diffusers(name, xl, case):
    theirs, ours = _pair(name, xl=xl, pag_applied_layers=["mid", "up"])
    _same(theirs, ours, **_inputs("text", **case))


PAG_IMAGE_CASES = {
    "sd-inpaint": ("StableDiffusionControlNetPAGInpaintPipeline", False, "inpaint", dict(pag_scale=2.5)),
    "sd-inpaint-no-cfg-window": ("StableDiffusionControlNetPAGInpaintPipeline", False, "inpaint",
                                 dict(guidance_scale=1.0, control_guidance_start=0.3, strength=1.0)),
    "sdxl-image": ("StableDiffusionXLControlNetPAGImg2ImgPipeline", True, "image", dict(pag_scale=2.5)),
    "sdxl-image-adaptive-window": ("StableDiffusionXLControlNetPAGImg2ImgPipeline", True, "image",
                                  dict(pag_adaptive_scale=0.002, control_guidance_end=0.6)),
}


@pytest.mark.parametrize("case", list(PAG_IMAGE_CASES))
def test_pag_controlnet_image_tasks_match_diffusers(case):
    name, xl, task, call = PAG_IMAGE_CASES[case]
    theirs, ours = _pair(name, xl=xl, pag_applied_layers=["mid", "up"])
    _same(theirs, ours, **_inputs(task, **call))


def test_pag_controlnet_inpainting_unet_matches_diffusers():
    theirs, ours = _pair("StableDiffusionControlNetPAGInpaintPipeline", inpaint_unet=True, pag_applied_layers=["mid"])
    _same(theirs, ours, **_inputs("inpaint", strength=1.0))


def test_pag_scale_zero_is_the_controlnet_pipeline():
    _, pag = _pair("StableDiffusionControlNetPAGPipeline", pag_applied_layers=["mid"])
    _, plain = _pair("StableDiffusionControlNetPipeline")
    call = _inputs("text")
    np.testing.assert_array_equal(pag(generator=fx.gen(0), pag_scale=0.0, **call).images,
                                  plain(generator=fx.gen(0), **call).images)


def test_size_defaults_to_the_control_image_and_callback_sees_it():
    _, ours = _pair("StableDiffusionControlNetPipeline")
    seen = {}

    def record(pipe, i, t, tensors):
        seen[i] = tensors["image"].shape
        return {}

    out = ours(**_inputs("text", image=cf.control_image(48), output_type="latent"), generator=fx.gen(0),
               callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents", "image"])
    assert tuple(out.images.shape) == (1, 4, 24, 24)
    assert seen[0] == (1, 3, 48, 48)


def test_callback_sees_and_replaces_each_nets_control_image():
    _, ours = _pair("StableDiffusionControlNetPipeline", nets=2)
    assert "image_1" in ours._callback_tensor_inputs
    seen = []

    def blank_second(pipe, i, t, tensors):
        seen.append((tensors["image_0"].shape, tensors["image_1"].shape))
        return {"image_1": torch.zeros_like(tensors["image_1"])}

    call = _inputs("text", nets=2, output_type="latent", controlnet_conditioning_scale=[0.0, 1.0])
    changed = ours(generator=fx.gen(0), callback_on_step_end=blank_second,
                   callback_on_step_end_tensor_inputs=["image_0", "image_1"], **call).images
    assert seen[0] == ((1, 3, SIZE, SIZE), (1, 3, SIZE, SIZE))
    plain = ours(generator=fx.gen(0), **call).images
    assert not torch.equal(changed, plain)  # the blank image steered steps 2 and 3


def test_pipeline_folder_round_trips_with_diffusers(tmp_path):
    theirs, ours = _pair("StableDiffusionControlNetPipeline", nets=2)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = kernel.load(str(tmp_path / "theirs"))
    assert type(loaded).__name__ == "StableDiffusionControlNetPipeline"
    assert [type(n).__name__ for n in loaded.controlnet.nets] == ["ControlNetModel"] * 2
    loaded.set_progress_bar_config(disable=True)
    call = _inputs("text", nets=2, num_inference_steps=2, controlnet_conditioning_scale=[0.5, 1.0])
    fx.assert_images_close(theirs(generator=fx.gen(0), **call).images, loaded(generator=fx.gen(0), **call).images)
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.StableDiffusionControlNetPipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    fx.assert_images_close(back(generator=fx.gen(0), **call).images, ours(generator=fx.gen(0), **call).images)


# ------------------------------------------------------------------ bad input
BAD_SINGLE = {
    "image": (dict(image=None), "image"),
    "image-count": (dict(prompt=["a", "b"], image=[cf.control_image(), cf.control_image(), cf.control_image()]),
                    "image"),
    "scale-list": (dict(controlnet_conditioning_scale=[0.5, 0.5]), "controlnet_conditioning_scale"),
    "scale-nan": (dict(controlnet_conditioning_scale=float("nan")), "controlnet_conditioning_scale"),
    "start-after-end": (dict(control_guidance_start=0.6, control_guidance_end=0.6), "control_guidance_start"),
    "end-above-one": (dict(control_guidance_end=1.5), "control_guidance_end"),
    "window-list": (dict(control_guidance_start=[0.0, 0.1]), "control_guidance_start"),
    "guess-mode": (dict(guess_mode="yes"), "guess_mode"),
}


@pytest.mark.parametrize("case", list(BAD_SINGLE))
def test_bad_control_arguments_raise_value_error_naming_them(case):
    _, ours = _pair("StableDiffusionControlNetPipeline")
    overrides, argument = BAD_SINGLE[case]
    with pytest.raises(ValueError, match=argument):
        ours(**_inputs("text", **overrides))


BAD_MULTI = {
    "one-image": (dict(image=cf.control_image()), "image"),
    "three-images": (dict(image=[cf.control_image()] * 3), "image"),
    "scales": (dict(controlnet_conditioning_scale=[1.0, 1.0, 1.0]), "controlnet_conditioning_scale"),
    "windows": (dict(control_guidance_start=[0.0], control_guidance_end=[1.0]), "control_guidance_start"),
    "ends": (dict(control_guidance_end=[1.0, 0.5, 0.2]), "control_guidance_end"),
    "start-after-end": (dict(control_guidance_start=[0.0, 0.8], control_guidance_end=[1.0, 0.3]),
                        "control_guidance_start"),
}


@pytest.mark.parametrize("case", list(BAD_MULTI))
def test_bad_multi_controlnet_arguments_raise_value_error_naming_them(case):
    _, ours = _pair("StableDiffusionControlNetPipeline", nets=2)
    overrides, argument = BAD_MULTI[case]
    with pytest.raises(ValueError, match=argument):
        ours(**_inputs("text", nets=2, **overrides))


def test_bad_control_image_of_image_tasks_names_control_image():
    _, ours = _pair("StableDiffusionXLControlNetInpaintPipeline", xl=True)
    with pytest.raises(ValueError, match="control_image"):
        ours(**_inputs("inpaint", control_image=None))
