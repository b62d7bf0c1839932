"""KandinskyV22ControlnetImg2ImgPipeline (image-to-image with a hint) against Diffusers: same weights, same
numbers; folders both ways; bad input."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

import diffusers
import kernel
from kernel_kandinsky import KandinskyV22ControlnetImg2ImgPipeline

from kandinsky_fixtures import EMBED, decoder_pipes, embeds, gen, max_diff

TOL = 1e-3
STEPS = 10
HINT_UNET = {"in_channels": 8, "addition_embed_type": "image_hint"}


def _image(seed: int = 0, size: int = 40) -> PIL.Image.Image:
    return PIL.Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8))


def _hint(batch: int = 1, height: int = 128, width: int = 128, seed: int = 3) -> torch.Tensor:
    # The tiny MoVQ halves the image (32 -> 16 latents); the UNet's hint encoder downsamples by 8: 16 x 8 = 128.
    return torch.rand(batch, 3, height, width, generator=gen(seed))


@pytest.fixture(scope="module")
def pipes():
    return decoder_pipes("KandinskyV22ControlnetImg2ImgPipeline", unet_over=HINT_UNET)


CASES = {
    "default": dict(),
    "num_images_per_prompt": dict(num_images_per_prompt=2),
    "batch": dict(batch=2, image=[_image(1), _image(2)]),
    "no_cfg": dict(guidance_scale=1.0),
    "strength_0.5": dict(strength=0.5),
    "strength_1": dict(strength=1.0),
    # With the tiny random weights the hint moves the result by ~1e-2 at strength 1 (and ~0.1 scaled up), far
    # above the tolerance, so these cases catch a hint that is dropped or mis-batched.
    "hint_matters": dict(strength=1.0, hint_scale=20.0, batch=2, image=[_image(1), _image(2)]),
    "tensor_image": dict(image=torch.rand(1, 3, 32, 32, generator=gen(7))),
    "list_of_embeds": dict(batch=2, as_list=True, image=[_image(1), _image(2)]),
    "generator_list": dict(batch=2, generator=[1, 2], image=[_image(1), _image(2)]),
    "pt_output": dict(output_type="pt"),
    "non_square": dict(height=32, width=64),
}


def _args(batch=1, as_list=False, image=None, height=32, width=32, generator=None, hint_scale=1.0, **kwargs):
    pos, neg = embeds(batch)
    if as_list:
        pos, neg = list(pos.split(1)), list(neg.split(1))
    generator = [gen(g) for g in generator] if generator else gen()
    kwargs.setdefault("output_type", "np")
    return dict(image_embeds=pos, image=image if image is not None else _image(), negative_image_embeds=neg,
                hint=_hint(batch, height * 4, width * 4) * hint_scale, height=height, width=width,
                num_inference_steps=STEPS, generator=generator, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_controlnet_img2img_matches_diffusers(pipes, case):
    ref, ours = pipes
    b = ours(**_args(**CASES[case])).images
    args = _args(**CASES[case])
    # Diffusers 0.42 resizes the image to (width, height), swapped: its run at the swapped size is ours.
    args["height"], args["width"] = args["width"], args["height"]
    a = ref(**args).images
    assert b.shape == a.shape and max_diff(a, b) < TOL
    assert float(torch.as_tensor(b).std()) > 0.01  # a real picture, not a constant
    height, width = CASES[case].get("height", 32), CASES[case].get("width", 32)
    rows = CASES[case].get("batch", 1) * CASES[case].get("num_images_per_prompt", 1)
    if case == "pt_output":
        assert tuple(b.shape) == (rows, 3, height, width) and b.min() >= 0  # image-to-image returns [0, 1]
    else:
        assert b.shape == (rows, height, width, 3)


def test_hint_image_and_strength_matter(pipes):
    _, ours = pipes
    base = ours(**_args()).images
    assert max_diff(base, ours(**{**_args(), "hint": torch.zeros(1, 3, 128, 128)}).images) > 1e-5
    full = ours(**_args(strength=1.0)).images
    assert max_diff(full, ours(**{**_args(strength=1.0), "hint": _hint(seed=9)}).images) > 1e-3
    assert max_diff(base, ours(**_args(image=_image(5))).images) > 1e-2
    assert max_diff(base, ours(**_args(strength=0.9)).images) > 1e-2


def test_one_image_serves_every_embedding(pipes):
    # Diffusers noises one latent for two embeddings and pairs it with the wrong rows; here it is repeated.
    _, ours = pipes
    one = ours(**_args(batch=2)).images
    two = ours(**_args(batch=2, image=[_image(), _image()])).images
    assert one.shape == (2, 32, 32, 3) and max_diff(one, two) < 1e-5


def test_legacy_callback(pipes):
    _, ours = pipes
    steps = []
    ours(**_args(callback=lambda i, t, latents: steps.append((i, tuple(latents.shape))), callback_steps=1))
    assert steps == [(i, (1, 4, 16, 16)) for i in range(3)]  # strength 0.3 of 10 steps: 3 run


def test_folders_both_ways(pipes, tmp_path):
    ref, ours = pipes
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    back = diffusers.KandinskyV22ControlnetImg2ImgPipeline.from_pretrained(tmp_path / "ours")
    mine = kernel.load(str(tmp_path / "theirs"))
    assert isinstance(mine, KandinskyV22ControlnetImg2ImgPipeline)
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    a, b, c = (p(**_args()).images for p in (back, mine, ours))
    assert max_diff(a, b) < TOL and max_diff(b, c) < TOL


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(strength=1.5), ValueError, r"strength must be a number in \[0.0, 1.0\]"),
    (dict(strength=-0.2), ValueError, r"strength must be a number in \[0.0, 1.0\]"),
    (dict(strength=0.05), ValueError, "leaves no denoising step"),
    (dict(image_embeds=torch.zeros(1, EMBED + 1)), ValueError, "image_embeds has width 33"),
    (dict(negative_image_embeds=torch.zeros(1, 16)), ValueError, "negative_image_embeds has width 16"),
    (dict(negative_image_embeds=None), ValueError, "negative_image_embeds is required while guidance is on"),
    (dict(hint=None), TypeError, "hint must be a torch.Tensor"),
    (dict(hint=torch.rand(1, 3, 64, 64)), ValueError, "takes a hint of 128x128"),
    (dict(hint=torch.rand(2, 3, 128, 128)), ValueError, "one hint per embedding"),
    (dict(hint=torch.rand(3, 128, 128)), ValueError, "hint must be 4-D"),
    (dict(hint=torch.rand(1, 1, 128, 128)), ValueError, "hint must have 3 channels"),
    (dict(height=30), ValueError, "height must be a positive multiple of 4"),
    (dict(width=34), ValueError, "width must be a positive multiple of 4"),
    (dict(image="a.png"), ValueError, "image must be a PIL image, a tensor"),
    (dict(image=[_image(0), _image(1), _image(2)]), ValueError, "3 images for 1 image_embeds"),
    (dict(output_type="latent"), ValueError, "output_type='latent' is not supported by "
                                             "KandinskyV22ControlnetImg2ImgPipeline"),
])
def test_bad_input_is_a_clear_error(pipes, kwargs, error, match):
    _, ours = pipes
    args = _args()
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ours(**args)
