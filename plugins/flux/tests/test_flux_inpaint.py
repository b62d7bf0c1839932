"""FluxInpaintPipeline against Diffusers' (the oracle): same tiny folder, same seed -> same images."""

import numpy as np
import PIL.Image
import pytest
import torch

import kernel
from kernel_flux import pack_latents

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def pipes(tmp_path_factory, tiny_flux_components):
    path = tmp_path_factory.mktemp("flux-inpaint")
    diffusers.FluxPipeline(**tiny_flux_components(True)).save_pretrained(path)
    theirs = diffusers.FluxInpaintPipeline.from_pretrained(path)
    ours = kernel.component("FluxInpaintPipeline").from_pretrained(path)
    for pipe in (theirs, ours):
        pipe.set_progress_bar_config(disable=True)
    return path, theirs, ours


def _run(pipe, output_type="np", **kwargs):
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(output_type=output_type, max_sequence_length=16, **kwargs).images


def _image(n, h, w, seed=5):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _mask(n, h, w):
    mask = torch.zeros(n, 1, h, w)
    mask[..., h // 4: 3 * h // 4, w // 2:] = 1.0
    return mask


@pytest.mark.parametrize("kwargs", [
    dict(prompt="a cat", image=_image(1, 32, 32), mask_image=_mask(1, 32, 32), height=32, width=32,
         strength=0.6, num_inference_steps=4),
    dict(prompt=["a cat", "a dog"], image=_image(1, 32, 48), mask_image=_mask(1, 32, 48).numpy()[:, 0],
         height=32, width=48, strength=1.0, num_inference_steps=2, num_images_per_prompt=2, guidance_scale=3.0),
    dict(prompt=["a dog", "a cat"], negative_prompt="blurry", true_cfg_scale=2.0, image=_image(2, 48, 32),
         mask_image=_mask(2, 48, 32), height=48, width=32, strength=0.8, num_inference_steps=3),
], ids=["square-0.6", "nonsquare-batch-npr-1.0", "tall-true-cfg-0.8"])
def test_matches_diffusers(pipes, kwargs):
    _, theirs, ours = pipes
    out = _run(ours, **kwargs)
    n = (len(kwargs["prompt"]) if isinstance(kwargs["prompt"], list) else 1) * kwargs.get("num_images_per_prompt", 1)
    assert out.shape == (n, kwargs["height"], kwargs["width"], 3)
    np.testing.assert_allclose(out, _run(theirs, **kwargs), atol=1e-3, rtol=0)


def test_from_pipe_pil_latents_and_known_region(pipes):
    _, theirs, loaded = pipes
    base = kernel.component("FluxPipeline")(**loaded.components)
    ours = kernel.component("FluxInpaintPipeline").from_pipe(base)
    assert ours.transformer is base.transformer and type(ours).__name__ == "FluxInpaintPipeline"
    ours.set_progress_bar_config(disable=True)
    image = PIL.Image.fromarray((_image(1, 32, 32)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    mask = PIL.Image.fromarray((_mask(1, 32, 32)[0, 0].numpy() * 255).astype(np.uint8))
    start = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append(tensors["latents"].shape)
        return {}

    kwargs = dict(prompt="a cat", image=image, mask_image=mask, height=32, width=32, strength=0.6,
                  num_inference_steps=3, latents=start)
    np.testing.assert_allclose(_run(ours, callback_on_step_end=callback, **kwargs), _run(theirs, **kwargs),
                               atol=1e-3, rtol=0)
    assert seen == [(1, 64, 16)] * 2  # 3 - int(3 - 3 * 0.6) = 2 steps, 8x8 packed tokens
    # Unmasked tokens end as the image latents exactly: an all-black mask returns the encoded image.
    black = PIL.Image.new("L", (32, 32))
    kept = _run(ours, output_type="latent", prompt="a cat", image=image, mask_image=black, height=32, width=32,
                num_inference_steps=2)
    pixels = ours.image_processor.preprocess(image, height=32, width=32)
    torch.manual_seed(0)
    encoded = ours.vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(0))
    expected = (encoded - ours.vae.config.shift_factor) * ours.vae.config.scaling_factor
    torch.testing.assert_close(kept, pack_latents(expected), atol=1e-5, rtol=0)


def test_padding_mask_crop_matches_diffusers(pipes):
    _, theirs, ours = pipes
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    mask = np.zeros((40, 56), dtype=np.uint8)
    mask[10:20, 30:44] = 255
    kwargs = dict(prompt="a cat", image=image, mask_image=PIL.Image.fromarray(mask), height=32, width=32,
                  padding_mask_crop=4, strength=0.9, num_inference_steps=2)
    a, b = _run(ours, output_type="pil", **kwargs), _run(theirs, output_type="pil", **kwargs)
    assert a[0].size == image.size
    diff = np.abs(np.asarray(a[0], dtype=int) - np.asarray(b[0], dtype=int))
    assert diff.max() <= 1  # uint8 rounding of float images equal to 1e-3
    np.testing.assert_array_equal(np.asarray(a[0])[mask == 0], np.asarray(image)[mask == 0])


@pytest.mark.parametrize("kwargs,match", [
    (dict(mask_image=_mask(1, 32, 48)), "mask_image is 32x48"),
    (dict(strength=1.5), "strength must be a number in"),
    (dict(strength=-0.1), "strength must be a number in"),
    (dict(height=30), "height must be a positive multiple of 4"),
    (dict(width=34), "width must be a positive multiple of 4"),
    (dict(mask_image=None), "mask_image"),
    (dict(padding_mask_crop=4), "padding_mask_crop needs image as one PIL image"),
    (dict(masked_image_latents=[1]), "masked_image_latents"),
    (dict(mask_image=_mask(3, 32, 32), image=_image(3, 32, 32), prompt=["a", "b"]), "images for a batch of 2"),
    (dict(strength=0.0), "leaves no denoising step"),
    (dict(latents=torch.zeros(1, 4, 8, 8)), "latents must have shape"),
])
def test_bad_inputs(pipes, kwargs, match):
    _, _, ours = pipes
    call = dict(prompt="a cat", image=_image(1, 32, 32), mask_image=_mask(1, 32, 32), height=32, width=32,
                num_inference_steps=2)
    call.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        _run(ours, **call)
