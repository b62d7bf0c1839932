"""Kandinsky3Img2ImgPipeline against Diffusers (the oracle): the same tiny pipeline saved by Diffusers and loaded
with kernel.load; strengths, prompt batches, negative prompts, guidance off, output types, folders both ways
and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffusers
import kernel
from kernel_kandinsky.kandinsky3 import Kandinsky3Img2ImgPipeline

from kandinsky3_fixtures import img2img_folder, picture
from kandinsky_fixtures import max_diff

TOL = 1e-3


@pytest.fixture(scope="module")
def pipes():
    path, ref = img2img_folder()
    ours = kernel.load(path)
    ours.set_progress_bar_config(disable=True)
    return ref, ours


CASES = {
    "default": dict(prompt="a cat", num_inference_steps=10),
    "strong": dict(prompt="a cat", negative_prompt="blurry", strength=0.8, num_inference_steps=4),
    "batch": dict(prompt=["a cat", "The Dog"], negative_prompt=["bad", "ugly x"], strength=0.6, num_inference_steps=4,
                  image=[picture(0), picture(1)]),
    "guidance_off": dict(prompt="a cat", guidance_scale=1.0, strength=0.5, num_inference_steps=4),
    "num_images_per_prompt": dict(prompt="a cat", num_images_per_prompt=2, strength=0.5, num_inference_steps=4),
    "pt_output": dict(prompt="a cat", strength=0.5, num_inference_steps=4, output_type="pt"),
}


def _run(pipe, **kwargs):
    kwargs = {"image": picture(), "output_type": "np", "generator": torch.Generator().manual_seed(0), **kwargs}
    return pipe(**kwargs).images


@pytest.mark.parametrize("case", list(CASES))
def test_matches_diffusers(pipes, case):
    ref, ours = pipes
    assert type(ours) is Kandinsky3Img2ImgPipeline
    a, b = _run(ref, **CASES[case]), _run(ours, **CASES[case])
    assert b.shape == a.shape and max_diff(a, b) < TOL
    assert tuple(b.shape[-3:-1] if case != "pt_output" else b.shape[-2:]) == (32, 48)


def test_strength_changes_the_result(pipes):
    _, ours = pipes
    low, high = _run(ours, prompt="a cat", strength=0.2), _run(ours, prompt="a cat", strength=0.9)
    source = np.asarray(picture(), dtype=np.float32)[None] / 255
    assert np.abs(low - source).mean() < np.abs(high - source).mean()


def test_folders_both_ways(pipes, tmp_path):
    _, ours = pipes
    ours.save_pretrained(tmp_path)
    back = diffusers.Kandinsky3Img2ImgPipeline.from_pretrained(tmp_path)
    back.set_progress_bar_config(disable=True)
    kw = dict(prompt="a cat", strength=0.5, num_inference_steps=4)
    assert max_diff(_run(back, **kw), _run(ours, **kw)) < TOL


def test_bad_inputs(pipes):
    _, ours = pipes
    with pytest.raises(TypeError, match="image must be a PIL image"):
        ours(prompt="a", image="cat.png", num_inference_steps=2)
    with pytest.raises(ValueError, match="strength"):
        ours(prompt="a", image=picture(), strength=1.5, num_inference_steps=2)
    with pytest.raises(ValueError, match="2 images for 3 prompts"):
        ours(prompt=["a", "b", "c"], image=[picture(0), picture(1)], num_inference_steps=2, strength=0.5)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours(prompt="a", image=picture(), height=32, num_inference_steps=2)
