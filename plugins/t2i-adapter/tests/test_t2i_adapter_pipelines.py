"""StableDiffusionAdapterPipeline and StableDiffusionXLAdapterPipeline against Diffusers' (fp32, 1e-3): scales,
the adapter's share of the steps, batches, several adapters, folders both ways; and the call's bad input."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kernel

sys.path.insert(0, str(Path(__file__).parent))
import t2i_fixtures as tf  # noqa: E402
from t2i_fixtures import fx, single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 32
SD, XL = "StableDiffusionAdapterPipeline", "StableDiffusionXLAdapterPipeline"


@functools.lru_cache(maxsize=None)
def _parts(xl: bool, adapters: int = 1, kind: str | None = None):
    kind = kind or ("full_adapter_xl" if xl else "full_adapter")
    theirs, ours = fx.xl_components(unet_over=tf.XL_UNET_OVER) if xl else fx.sd_components(unet_over=tf.SD_UNET_OVER)
    pairs = [tf.adapter(kind, seed=3 + k) for k in range(adapters)]
    theirs["adapter"] = pairs[0][0] if adapters == 1 else diffusers.MultiAdapter([p[0] for p in pairs])
    ours["adapter"] = pairs[0][1] if adapters == 1 else [p[1] for p in pairs]
    return theirs, ours


def _pair(xl: bool = False, adapters: int = 1, kind: str | None = None):
    theirs_parts, ours_parts = _parts(xl, adapters, kind)
    name = XL if xl else SD
    theirs = getattr(diffusers, name)(**theirs_parts)
    ours = kernel.component(name)(**ours_parts)
    for p in (theirs, ours):
        p.set_progress_bar_config(disable=True)
    return theirs, ours


def _inputs(adapters: int = 1, **kwargs):
    images = [tf.control_image(SIZE, seed=7 + k) for k in range(adapters)]
    call = dict(prompt="a photo of a cat", image=images[0] if adapters == 1 else images, num_inference_steps=3,
                output_type="np")
    return {**call, **kwargs}


def _same(theirs, ours, **call):
    a = theirs(generator=fx.gen(0), **call).images
    b = ours(generator=fx.gen(0), **call).images
    fx.assert_images_close(a, b, atol=1e-3)
    return b


TWO_PROMPTS = dict(prompt=["a cat", "a dog"], image=[tf.control_image(SIZE, seed=1), tf.control_image(SIZE, seed=2)])
SD_CASES = {
    "default": {},
    "scale": dict(adapter_conditioning_scale=0.4, negative_prompt="blurry"),
    "no-cfg": dict(guidance_scale=1.0),
    "images-per-prompt": dict(num_images_per_prompt=2),
    "image-per-prompt": TWO_PROMPTS,
    "tensor-image": dict(image=torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))),
}


@pytest.mark.parametrize("case", list(SD_CASES))
def test_sd_matches_diffusers(case):
    theirs, ours = _pair()
    _same(theirs, ours, **_inputs(**SD_CASES[case]))


def test_sd_light_adapter_matches_diffusers():
    theirs, ours = _pair(kind="light_adapter")
    _same(theirs, ours, **_inputs(adapter_conditioning_scale=0.8))


XL_CASES = {
    "default": {},
    "scale-rescale": dict(adapter_conditioning_scale=0.6, guidance_rescale=0.3, negative_prompt="blurry"),
    "factor": dict(adapter_conditioning_factor=0.5, num_inference_steps=4),
    "factor-denoising-end": dict(adapter_conditioning_factor=0.7, denoising_end=0.6, num_inference_steps=5),
    "images-per-prompt": dict(num_images_per_prompt=2, original_size=(40, 40)),
    "image-per-prompt": TWO_PROMPTS,
}


@pytest.mark.parametrize("case", list(XL_CASES))
def test_sdxl_matches_diffusers(case):
    theirs, ours = _pair(xl=True)
    _same(theirs, ours, **_inputs(**XL_CASES[case]))


def test_sdxl_factor_counts_scheduler_steps_with_a_second_order_scheduler():
    """Heun runs 2N-1 evaluations for N steps; Diffusers' factor counts the N steps."""
    theirs, ours = _pair(xl=True)
    theirs.scheduler = diffusers.HeunDiscreteScheduler.from_config(theirs.scheduler.config)
    ours.scheduler = kernel.component("HeunDiscreteScheduler").from_config(dict(ours.scheduler.config))
    _same(theirs, ours, **_inputs(num_inference_steps=4, adapter_conditioning_factor=0.5))


@pytest.mark.parametrize("xl", [False, True], ids=["sd", "sdxl"])
def test_multi_adapter_matches_diffusers(xl):
    theirs, ours = _pair(xl=xl, adapters=2)
    assert type(ours.adapter).__name__ == "MultiAdapter"
    extra = dict(adapter_conditioning_factor=0.7) if xl else {}
    _same(theirs, ours, **_inputs(adapters=2, adapter_conditioning_scale=[0.3, 1.2], **extra))


def test_sdxl_adapter_with_ip_adapter_matches_diffusers():
    """IP-Adapter image prompts on the SDXL adapter pipeline (Diffusers' SD adapter pipeline takes none)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ip-adapter" / "tests"))
    import ip_fixtures as ipf

    theirs_parts, ours_parts = fx.xl_components(unet_over=tf.XL_UNET_OVER)  # fresh: the load changes the UNet
    encoder, extractor = ipf.image_encoder()
    theirs_adapter, ours_adapter = tf.adapter("full_adapter_xl")
    theirs = diffusers.StableDiffusionXLAdapterPipeline(**theirs_parts, adapter=theirs_adapter, image_encoder=encoder,
                                                       feature_extractor=extractor)
    ours = kernel.component(XL)(**ours_parts, adapter=ours_adapter, image_encoder=encoder, feature_extractor=extractor)
    state = ipf.random_ip_adapter(theirs.unet, "plus", seed=1)
    for p in (theirs, ours):
        p.set_progress_bar_config(disable=True)
        p.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None)
    call = _inputs(ip_adapter_image=ipf.ip_image(), adapter_conditioning_factor=0.7)
    steered = _same(theirs, ours, **call)
    ours.set_ip_adapter_scale(0.0)
    assert np.abs(steered - ours(generator=fx.gen(0), **call).images).max() > 1e-2


def test_adapter_steers_and_zero_scale_or_factor_is_the_plain_pipeline():
    for xl, plain_name in ((False, "StableDiffusionPipeline"), (True, "StableDiffusionXLPipeline")):
        _, ours = _pair(xl=xl)
        plain = kernel.component(plain_name)(**{k: v for k, v in _parts(xl)[1].items() if k != "adapter"})
        plain.set_progress_bar_config(disable=True)
        call = _inputs()
        steered = ours(generator=fx.gen(0), **call).images
        base = plain(generator=fx.gen(0), height=SIZE, width=SIZE,
                     **{k: v for k, v in call.items() if k != "image"}).images
        assert np.abs(steered - base).max() > 0.02  # the random adapter does change the image
        np.testing.assert_array_equal(ours(generator=fx.gen(0), adapter_conditioning_scale=0.0, **call).images, base)
        if xl:
            np.testing.assert_array_equal(
                ours(generator=fx.gen(0), adapter_conditioning_factor=0.0, **call).images, base)


def test_from_pipe_adds_the_adapter_to_a_plain_pipeline_and_back():
    _, ours = _pair()
    plain = kernel.component("StableDiffusionPipeline")(**{k: v for k, v in _parts(False)[1].items() if k != "adapter"})
    built = kernel.component(SD).from_pipe(plain, adapter=ours.adapter)
    assert built.unet is plain.unet and built.adapter is ours.adapter
    built.set_progress_bar_config(disable=True)
    call = _inputs(output_type="latent")
    assert torch.equal(built(generator=fx.gen(0), **call).images, ours(generator=fx.gen(0), **call).images)
    back = kernel.component("StableDiffusionPipeline").from_pipe(built)
    assert type(back).__name__ == "StableDiffusionPipeline" and back.unet is plain.unet


def test_factor_keeps_the_adapter_for_the_leading_steps_only():
    """factor 0.5 of 4 steps: the first two steps see the features, the last two do not."""
    _, ours = _pair(xl=True)
    seen = []
    unet_forward = ours.unet.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("down_intrablock_additional_residuals") is not None)
        return unet_forward(*args, **kwargs)

    ours.unet.forward = spy
    try:
        ours(generator=fx.gen(0), **_inputs(num_inference_steps=4, adapter_conditioning_factor=0.5,
                                             output_type="latent"))
    finally:
        del ours.unet.forward
    assert seen == [True, True, False, False]


def test_images_per_prompt_pair_each_prompt_with_its_image():
    """Per-prompt images with num_images_per_prompt > 1: prompt k's images see image k (Diffusers tiles the
    features instead, pairing prompts with other prompts' images)."""
    _, ours = _pair()
    both = ours(generator=fx.gen(0, 4), num_images_per_prompt=2, **_inputs(**TWO_PROMPTS)).images
    for k in range(2):
        one = ours(generator=fx.gen(2 * k, 2), num_images_per_prompt=2,
                   **_inputs(prompt=TWO_PROMPTS["prompt"][k], image=TWO_PROMPTS["image"][k])).images
        np.testing.assert_allclose(both[2 * k:2 * k + 2], one, atol=1e-5, rtol=0)


def test_size_defaults_to_the_image_rounded_to_the_adapter_factor_and_legacy_callback_runs():
    _, ours = _pair(xl=True)  # factor 4
    steps = []
    out = ours(**_inputs(image=tf.control_image(42), output_type="latent"), generator=fx.gen(0),
               callback=lambda i, t, latents: steps.append((i, tuple(latents.shape))), callback_steps=2)
    assert tuple(out.images.shape) == (1, 4, 20, 20)  # 42 -> 40 px -> 20 latents
    assert steps == [(0, (1, 4, 20, 20)), (2, (1, 4, 20, 20))]


def test_grayscale_adapter_takes_rgb_images_as_grayscale():
    theirs_parts, ours_parts = _parts(False)
    gray_theirs, gray_ours = tf.adapter("full_adapter", in_channels=1)
    theirs = diffusers.StableDiffusionAdapterPipeline(**{**theirs_parts, "adapter": gray_theirs})
    ours = kernel.component(SD)(**{**ours_parts, "adapter": gray_ours})
    for p in (theirs, ours):
        p.set_progress_bar_config(disable=True)
    image = tf.control_image(SIZE)
    # Diffusers needs the grayscale image itself; ours converts an RGB one.
    a = theirs(generator=fx.gen(0), **_inputs(image=image.convert("L"))).images
    b = ours(generator=fx.gen(0), **_inputs(image=image)).images
    fx.assert_images_close(a, b, atol=1e-3)


@pytest.mark.parametrize("xl", [False, True], ids=["sd", "sdxl"])
def test_pipeline_folder_round_trips_with_diffusers(tmp_path, xl):
    theirs, ours = _pair(xl=xl, adapters=2)
    call = _inputs(adapters=2, num_inference_steps=2, adapter_conditioning_scale=[0.5, 1.0])
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = kernel.load(str(tmp_path / "theirs"))
    assert type(loaded).__name__ == (XL if xl else SD)
    assert [type(a).__name__ for a in loaded.adapter.adapters] == ["T2IAdapter"] * 2
    loaded.set_progress_bar_config(disable=True)
    fx.assert_images_close(theirs(generator=fx.gen(0), **call).images, loaded(generator=fx.gen(0), **call).images)
    ours.save_pretrained(tmp_path / "ours")
    index = json.loads((tmp_path / "ours" / "model_index.json").read_text())
    assert index["adapter"] == ["diffusers", "MultiAdapter"] and ("image_encoder" in index) == xl  # Diffusers' keys
    back = getattr(diffusers, XL if xl else SD).from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    fx.assert_images_close(back(generator=fx.gen(0), **call).images, ours(generator=fx.gen(0), **call).images)


# ------------------------------------------------------------------ bad input
BAD_SINGLE = {
    "no-image": (dict(image=None), "image"),
    "image-count": (dict(prompt=["a", "b"], image=[tf.control_image()] * 3), "image"),
    "tensor-size": (dict(image=torch.rand(1, 3, 16, 16), height=SIZE, width=SIZE), "image"),
    "image-type": (dict(image="edges.png"), "image"),
    "scale-list": (dict(adapter_conditioning_scale=[0.5, 0.5]), "adapter_conditioning_scale"),
    "scale-nan": (dict(adapter_conditioning_scale=float("nan")), "adapter_conditioning_scale"),
    "callback-steps": (dict(callback_steps=0), "callback_steps"),
}


@pytest.mark.parametrize("case", list(BAD_SINGLE))
def test_bad_adapter_arguments_raise_naming_them(case):
    _, ours = _pair()
    overrides, argument = BAD_SINGLE[case]
    with pytest.raises((ValueError, TypeError), match=argument):
        ours(**_inputs(**overrides))


BAD_XL = {
    "factor": (dict(adapter_conditioning_factor=1.5), "adapter_conditioning_factor"),
    "ip-adapter": (dict(ip_adapter_image=tf.control_image()), "ip_adapter_image"),
    "size-factor": (dict(height=32, width=42), "width"),  # the VAE takes 42, the adapter (factor 4) not
}


@pytest.mark.parametrize("case", list(BAD_XL))
def test_bad_sdxl_adapter_arguments_raise_value_error_naming_them(case):
    _, ours = _pair(xl=True)
    overrides, argument = BAD_XL[case]
    with pytest.raises(ValueError, match=argument):
        ours(**_inputs(**overrides))


BAD_MULTI = {
    "one-image": (dict(image=tf.control_image()), "image"),
    "three-images": (dict(image=[tf.control_image()] * 3), "image"),
    "scales": (dict(adapter_conditioning_scale=[1.0, 1.0, 1.0]), "adapter_conditioning_scale"),
    "one-scale": (dict(adapter_conditioning_scale=[1.0]), "adapter_conditioning_scale"),
}


@pytest.mark.parametrize("case", list(BAD_MULTI))
def test_bad_multi_adapter_arguments_raise_value_error_naming_them(case):
    _, ours = _pair(adapters=2)
    overrides, argument = BAD_MULTI[case]
    with pytest.raises(ValueError, match=argument):
        ours(**_inputs(adapters=2, **overrides))


def test_missing_or_wrong_adapter_component_is_refused():
    _, ours_parts = _parts(False)
    with pytest.raises(ValueError, match="adapter"):
        kernel.component(SD)(**{**ours_parts, "adapter": torch.nn.Linear(2, 2)})
    pipe = kernel.component(SD)(**{**ours_parts, "adapter": None})
    with pytest.raises(ValueError, match="adapter"):
        pipe(**_inputs())
