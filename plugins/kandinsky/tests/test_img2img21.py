"""KandinskyImg2ImgPipeline (2.1) against Diffusers: same weights, same numbers; folders both ways; bad input."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

import diffusers
import kernel
from kernel_kandinsky.kandinsky21 import KandinskyImg2ImgPipeline

from kandinsky21_fixtures import decoder21_pipes
from kandinsky_fixtures import embeds, gen, max_diff

TOL = 1e-3
RUN = dict(height=32, width=32, num_inference_steps=4, output_type="np")


@pytest.fixture(scope="module")
def pipes():
    return decoder21_pipes("KandinskyImg2ImgPipeline")


def _image(seed: int = 0):
    rng = np.random.RandomState(seed)
    return PIL.Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8))


def _run(pipe, prompt="a red cat", batch=1, image=None, **kwargs):
    pos, neg = embeds(batch)
    image = _image() if image is None else image
    return pipe(prompt, image, pos, neg, **{**RUN, **kwargs}, generator=kwargs.pop("generator", gen())).images


CASES = {
    "default": dict(),
    "negative_prompt": dict(negative_prompt="blurry"),
    "strength_0_75": dict(strength=0.75),
    "batch": dict(prompt=["a red cat", "a dog"], batch=2, image=[_image(1), _image(2)]),
    "num_images_per_prompt": dict(num_images_per_prompt=2),
    "guidance_off": dict(guidance_scale=1.0),
    "tensor_image": dict(image=torch.rand(1, 3, 32, 32, generator=gen(7)) * 2 - 1),
    "pt_output": dict(output_type="pt"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_img2img_matches_diffusers(pipes, case):
    ref, ours = pipes
    a, b = _run(ref, **CASES[case]), _run(ours, **CASES[case])
    assert b.shape == a.shape and max_diff(a, b) < TOL
    assert float(torch.as_tensor(b).std()) > 0.01


def test_img2img_starts_from_the_image(pipes):
    _, ours = pipes
    assert max_diff(_run(ours, image=_image(1)), _run(ours, image=_image(2))) > 1e-2


def test_img2img_folders_both_ways(pipes, tmp_path):
    ref, ours = pipes
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    back = diffusers.KandinskyImg2ImgPipeline.from_pretrained(tmp_path / "ours")
    mine = kernel.load(str(tmp_path / "theirs"))
    assert type(mine) is KandinskyImg2ImgPipeline
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    assert max_diff(_run(back), _run(mine)) < TOL and max_diff(_run(mine), _run(ours)) < TOL


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(image="cat.png"), ValueError, "image must be a PIL image"),
    (dict(prompt=["a", "b"]), ValueError, "one image embedding per prompt"),
    (dict(strength=1.5), ValueError, "strength"),
    (dict(strength=0.001, num_inference_steps=1000), ValueError, "strength"),
    (dict(output_type="latent"), ValueError, "output_type"),
])
def test_img2img_bad_input(pipes, kwargs, error, match):
    _, ours = pipes
    with pytest.raises(error, match=match):
        _run(ours, **kwargs)
