"""KandinskyV22Img2ImgPipeline, KandinskyV22InpaintPipeline and KandinskyV22ControlnetPipeline against Diffusers."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

import diffusers
import kernel

from kandinsky_fixtures import decoder_pipes, embeds, gen, max_diff

TOL = 1e-3
SIZE = dict(height=32, width=32)


def _image(seed=0, size=40) -> PIL.Image.Image:
    return PIL.Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8))


def _mask(size=32) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.float32)
    mask[: size // 2, 4:20] = 1
    return mask


def _run(pipe, *args, **kwargs):
    kwargs.setdefault("output_type", "np")
    return pipe(*args, **SIZE, generator=kwargs.pop("generator", gen()), **kwargs).images


# ---------------------------------------------------------------- image-to-image
@pytest.fixture(scope="module")
def i2i():
    return decoder_pipes("KandinskyV22Img2ImgPipeline")


I2I = {
    "default": dict(),
    "strong": dict(strength=0.9),
    "num_images_per_prompt": dict(num_images_per_prompt=2),
    "guidance_off": dict(guidance_scale=1.0),
    "batch": dict(batch=2, image=[_image(0), _image(1)]),
    "tensor_image": dict(image=torch.rand(1, 3, 32, 32, generator=gen(7))),
    "pt_output": dict(output_type="pt"),
}


@pytest.mark.parametrize("case", list(I2I))
def test_img2img_matches_diffusers(i2i, case):
    ref, ours = i2i
    kwargs = dict(I2I[case])
    pos, neg = embeds(kwargs.pop("batch", 1))
    image = kwargs.pop("image", _image())
    a = _run(ref, pos, image, neg, num_inference_steps=10, **kwargs)
    b = _run(ours, pos, image, neg, num_inference_steps=10, **kwargs)
    assert max_diff(a, b) < TOL and float(torch.as_tensor(b).std()) > 0.01
    if case == "pt_output":
        assert b.min() >= 0  # image-to-image returns [0, 1], unlike the text-to-image decoder


def test_img2img_strength_changes_the_result(i2i):
    _, ours = i2i
    pos, neg = embeds(1)
    weak = _run(ours, pos, _image(), neg, num_inference_steps=10, strength=0.3)
    strong = _run(ours, pos, _image(), neg, num_inference_steps=10, strength=0.9)
    assert max_diff(weak, strong) > 1e-2


def test_img2img_through_auto_pipeline_from_pipe():
    from kernel_sd.auto import AutoPipelineForImage2Image

    _, text = decoder_pipes()
    pipe = AutoPipelineForImage2Image.from_pipe(text)
    assert type(pipe).__name__ == "KandinskyV22Img2ImgPipeline" and pipe.unet is text.unet


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(image="a.png"), ValueError, "image must be a PIL image, a tensor"),
    (dict(strength=1.5), ValueError, "strength"),
    (dict(strength=0.05), ValueError, "leaves no denoising step"),
    (dict(image=[_image(0), _image(1), _image(2)]), ValueError, "3 images for 1 image_embeds"),
    (dict(height=30), ValueError, "height must be a positive multiple of 4"),
])
def test_img2img_bad_input(i2i, kwargs, error, match):
    _, ours = i2i
    pos, neg = embeds(1)
    args = dict(image=_image(), num_inference_steps=10)
    args.update(kwargs)
    size = {**SIZE, **{k: args.pop(k) for k in ("height", "width") if k in args}}
    with pytest.raises(error, match=match):
        ours(pos, negative_image_embeds=neg, **size, **args)


# ---------------------------------------------------------------- inpainting
@pytest.fixture(scope="module")
def inpaint():
    return decoder_pipes("KandinskyV22InpaintPipeline", unet_over={"in_channels": 9})


INPAINT = {
    "default": dict(),
    "num_images_per_prompt": dict(num_images_per_prompt=2),
    "batch": dict(batch=2, image=[_image(1, 32), _image(2, 32)], mask_image=[_mask(), 1 - _mask()]),
    "guidance_off": dict(guidance_scale=1.0),
    "latents": dict(latents=torch.randn(1, 4, 16, 16, generator=gen(11))),
    "pil_mask_other_size": dict(mask_image=PIL.Image.fromarray((_mask(48) * 255).astype(np.uint8))),
    "tensors": dict(image=torch.rand(1, 3, 32, 32, generator=gen(5)) * 2 - 1,
                    mask_image=torch.from_numpy(_mask())),
    "pt_output": dict(output_type="pt"),
}


@pytest.mark.parametrize("case", list(INPAINT))
def test_inpaint_matches_diffusers(inpaint, case):
    ref, ours = inpaint
    kwargs = dict(INPAINT[case])
    pos, neg = embeds(kwargs.pop("batch", 1))
    image, mask = kwargs.pop("image", _image(size=32)), kwargs.pop("mask_image", _mask())
    clone = (lambda x: x.clone() if isinstance(x, torch.Tensor) else x)  # Diffusers edits tensor masks in place
    a = _run(ref, pos, clone(image), clone(mask), neg, num_inference_steps=3, **kwargs)
    b = _run(ours, pos, clone(image), clone(mask), neg, num_inference_steps=3, **kwargs)
    assert max_diff(a, b) < TOL and float(torch.as_tensor(b).std()) > 0.01


def test_inpaint_keeps_the_unmasked_region_closer_than_the_masked_one(inpaint):
    _, ours = inpaint
    pos, neg = embeds(1)
    image = _image(size=32)
    out = _run(ours, pos, image, _mask(), neg, num_inference_steps=3, output_type="np")[0]
    src = np.asarray(image, dtype=np.float32) / 255
    keep = _mask() < 0.5
    keep[:20, :24] = False  # stay clear of the repainted border
    assert np.abs(out - src)[keep].mean() < np.abs(out - src)[~keep].mean()


def test_inpaint_callback_tensors(inpaint):
    ref, ours = inpaint
    seen = {"ref": [], "ours": []}

    def record(tag):
        def callback(pipe, i, t, tensors):
            seen[tag].append({k: v.clone() for k, v in tensors.items()})
            return {}
        return callback

    names = ["latents", "masked_image", "mask_image", "image_embeds"]
    pos, neg = embeds(1)
    _run(ref, pos, _image(size=32), _mask(), neg, num_inference_steps=3, callback_on_step_end=record("ref"),
         callback_on_step_end_tensor_inputs=names)
    _run(ours, pos, _image(size=32), _mask(), neg, num_inference_steps=3, callback_on_step_end=record("ours"),
         callback_on_step_end_tensor_inputs=names)
    for x, y in zip(seen["ref"], seen["ours"]):
        assert max_diff(x["latents"], y["latents"]) < TOL and max_diff(x["image_embeds"], y["image_embeds"]) < TOL
        # Per-image tensors come one row per image (Diffusers hands the guidance-doubled batch).
        for name in ("masked_image", "mask_image"):
            assert max_diff(x[name][:1], y[name]) < TOL


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(mask_image=None), ValueError, "mask_image"),
    (dict(image=torch.rand(1, 3, 32, 32)), TypeError, "both be tensors"),
    (dict(image=torch.rand(1, 3, 32, 32) * 3, mask_image=torch.zeros(32, 32)), ValueError, r"image tensor values"),
    (dict(image=torch.rand(1, 3, 32, 32), mask_image=torch.full((32, 32), 2.0)), ValueError, "mask_image tensor"),
    (dict(image=torch.rand(1, 3, 16, 16), mask_image=torch.zeros(16, 16)), ValueError, "latent grid"),
    (dict(image=torch.rand(2, 3, 32, 32), mask_image=torch.zeros(1, 1, 32, 32)), ValueError, "same batch size"),
])
def test_inpaint_bad_input(inpaint, kwargs, error, match):
    _, ours = inpaint
    pos, neg = embeds(1)
    args = dict(image=_image(size=32), mask_image=_mask(), num_inference_steps=3)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ours(pos, negative_image_embeds=neg, **SIZE, **args)


def test_inpaint_folders_both_ways(inpaint, tmp_path):
    ref, ours = inpaint
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.KandinskyV22InpaintPipeline.from_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    mine = kernel.load(str(tmp_path / "theirs"))
    pos, neg = embeds(1)
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    a = _run(back, pos, _image(size=32), _mask(), neg, num_inference_steps=3)
    b = _run(mine, pos, _image(size=32), _mask(), neg, num_inference_steps=3)
    assert type(mine).__name__ == "KandinskyV22InpaintPipeline" and max_diff(a, b) < TOL


# ---------------------------------------------------------------- ControlNet (hint)
@pytest.fixture(scope="module")
def controlnet():
    return decoder_pipes("KandinskyV22ControlnetPipeline",
                         unet_over={"in_channels": 8, "addition_embed_type": "image_hint"})


def _hint(batch=1):
    return torch.rand(batch, 3, 128, 128, generator=gen(3))  # the hint encoder downsamples by 8: 16 x 8


CONTROL = {
    "default": dict(),
    "num_images_per_prompt": dict(num_images_per_prompt=2),
    "batch": dict(batch=2),
    "latents": dict(latents=torch.randn(1, 4, 16, 16, generator=gen(12))),
    "pt_output": dict(output_type="pt"),
}


@pytest.mark.parametrize("case", list(CONTROL))
def test_controlnet_matches_diffusers(controlnet, case):
    ref, ours = controlnet
    kwargs = dict(CONTROL[case])
    batch = kwargs.pop("batch", 1)
    pos, neg = embeds(batch)
    a = _run(ref, pos, neg, _hint(batch), num_inference_steps=3, **kwargs)
    b = _run(ours, pos, neg, _hint(batch), num_inference_steps=3, **kwargs)
    assert max_diff(a, b) < TOL and float(torch.as_tensor(b).std()) > 0.01


def test_controlnet_hint_matters_and_legacy_callback(controlnet):
    _, ours = controlnet
    pos, neg = embeds(1)
    steps = []
    a = _run(ours, pos, neg, _hint(), num_inference_steps=3, callback=lambda i, t, x: steps.append(i))
    b = _run(ours, pos, neg, torch.zeros(1, 3, 128, 128), num_inference_steps=3)
    assert steps == [0, 1, 2] and max_diff(a, b) > 1e-4  # small with tiny random weights, far above float noise


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(hint=None), TypeError, "hint must be a torch.Tensor"),
    (dict(hint=torch.rand(1, 3, 64, 64)), ValueError, "takes a hint of 128x128"),
    (dict(hint=torch.rand(2, 3, 128, 128)), ValueError, "one hint per embedding"),
    (dict(output_type="latent"), ValueError, "output_type='latent'"),
])
def test_controlnet_bad_input(controlnet, kwargs, error, match):
    _, ours = controlnet
    pos, neg = embeds(1)
    args = dict(hint=_hint(), num_inference_steps=3)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ours(pos, neg, **SIZE, **args)
