"""KandinskyInpaintPipeline (2.1) against Diffusers: same weights, same numbers; folders both ways; bad input."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

import diffusers
import kernel
from kernel_kandinsky.kandinsky21 import KandinskyInpaintPipeline

from kandinsky21_fixtures import decoder21_pipes
from kandinsky_fixtures import embeds, gen, max_diff

TOL = 1e-3
RUN = dict(height=32, width=32, num_inference_steps=3, output_type="np")


@pytest.fixture(scope="module")
def pipes():
    return decoder21_pipes("KandinskyInpaintPipeline", unet_over=(("in_channels", 9),))


def _image(seed: int = 0):
    rng = np.random.RandomState(seed)
    return PIL.Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8))


def _mask():
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[:16] = 1
    return mask


def _run(pipe, prompt="a red cat", batch=1, image=None, mask_image=None, **kwargs):
    pos, neg = embeds(batch)
    image = _image() if image is None else image
    mask_image = _mask() if mask_image is None else mask_image
    return pipe(prompt, image, mask_image, pos, neg, **{**RUN, **kwargs}, generator=gen()).images


CASES = {
    "default": dict(),
    "negative_prompt": dict(negative_prompt="blurry"),
    "batch": dict(prompt=["a red cat", "a dog"], batch=2, image=[_image(1), _image(2)],
                  mask_image=[_mask(), _mask()]),
    "num_images_per_prompt": dict(num_images_per_prompt=2),
    "guidance_off": dict(guidance_scale=1.0),
    "latents": dict(latents=torch.randn(1, 4, 16, 16, generator=gen(8))),
    "pil_mask": dict(mask_image=PIL.Image.fromarray((_mask() * 255).astype(np.uint8))),
    "pt_output": dict(output_type="pt"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_inpaint_matches_diffusers(pipes, case):
    ref, ours = pipes
    a, b = _run(ref, **CASES[case]), _run(ours, **CASES[case])
    assert b.shape == a.shape and max_diff(a, b) < TOL
    assert float(torch.as_tensor(b).std()) > 0.01


def test_inpaint_reads_the_image(pipes):
    _, ours = pipes
    assert max_diff(_run(ours, image=_image(1)), _run(ours, image=_image(2))) > 1e-3


def test_inpaint_folders_both_ways(pipes, tmp_path):
    ref, ours = pipes
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    back = diffusers.KandinskyInpaintPipeline.from_pretrained(tmp_path / "ours")
    mine = kernel.load(str(tmp_path / "theirs"))
    assert type(mine) is KandinskyInpaintPipeline
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    assert max_diff(_run(back), _run(mine)) < TOL and max_diff(_run(mine), _run(ours)) < TOL


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt=["a", "b"]), "one image embedding per prompt"),
    (dict(latents=torch.zeros(1, 4, 8, 8)), "latents must have shape"),
    (dict(output_type="latent"), "output_type"),
])
def test_inpaint_bad_input(pipes, kwargs, match):
    _, ours = pipes
    with pytest.raises(ValueError, match=match):
        _run(ours, **kwargs)
