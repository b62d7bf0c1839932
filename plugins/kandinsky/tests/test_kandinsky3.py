"""Kandinsky3Pipeline against Diffusers (the oracle): the same tiny pipeline saved by Diffusers and loaded with
kernel.load; prompts, negative prompts, batches, given latents, guidance off, embeddings with masks, output
types, callbacks, folders both ways and bad input."""

from __future__ import annotations

import pytest
import torch

import diffusers
import kernel
from kernel_kandinsky.kandinsky3 import Kandinsky3Pipeline

from kandinsky3_fixtures import folder
from kandinsky_fixtures import max_diff

TOL = 1e-3
BASE = dict(height=16, width=16, num_inference_steps=2, output_type="np")


@pytest.fixture(scope="module")
def pipes():
    path, ref = folder()
    ours = kernel.load(path)
    ours.set_progress_bar_config(disable=True)
    return ref, ours


def _latents(batch: int) -> torch.Tensor:
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(9))


CASES = {
    "default": dict(prompt="A painting of a squirrel eating a burger", guidance_scale=6.0),
    "default_guidance": dict(prompt="a cat"),
    "negative_prompt": dict(prompt="a cat", negative_prompt="blurry, low quality"),
    "batch": dict(prompt=["a cat", "The Dog in a hat"], negative_prompt=["bad", "ugly picture"]),
    "batch_no_negative": dict(prompt=["a cat", "The Dog in a hat"], guidance_scale=4.0),
    "num_images_per_prompt": dict(prompt="a red house", num_images_per_prompt=2),
    "latents": dict(prompt="a cat", latents=_latents(1)),
    "guidance_off": dict(prompt="a cat", guidance_scale=1.0),
    "non_square": dict(prompt="a cat", height=16, width=80),
}


def _run(pipe, **kwargs):
    kwargs = {**BASE, **kwargs}
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(**kwargs).images


@pytest.mark.parametrize("case", list(CASES))
def test_matches_diffusers(pipes, case):
    ref, ours = pipes
    assert type(ours) is Kandinsky3Pipeline and type(ours.unet).__module__.startswith("kernel_kandinsky")
    a, b = _run(ref, **CASES[case]), _run(ours, **CASES[case])
    assert b.shape == a.shape and max_diff(a, b) < TOL
    assert float(torch.as_tensor(b).std()) > 0.01


@pytest.mark.parametrize("output_type", ["pt", "latent", "pil"])
def test_output_types_match_diffusers(pipes, output_type):
    import numpy as np

    ref, ours = pipes
    a, b = (_run(p, prompt="a cat", output_type=output_type) for p in (ref, ours))
    if output_type == "pil":
        assert b[0].size == a[0].size
        assert np.abs(np.asarray(a[0], dtype=np.int16) - np.asarray(b[0], dtype=np.int16)).max() <= 1
    else:
        assert max_diff(a, b) < TOL


def test_encode_prompt_and_embeddings_input(pipes):
    ref, ours = pipes
    got = ours.encode_prompt("A Cat", True, negative_prompt="blurry", _cut_context=True)
    want = ref.encode_prompt("A Cat", True, negative_prompt="blurry", _cut_context=True)
    for a, b in zip(got, want):
        assert a.shape == b.shape and max_diff(a, b) < 1e-5
    kwargs = dict(prompt_embeds=got[0], negative_prompt_embeds=got[1], attention_mask=got[2],
                  negative_attention_mask=got[3])
    assert max_diff(_run(ours, **kwargs), _run(ref, **kwargs)) < TOL
    assert max_diff(_run(ours, **kwargs), _run(ours, prompt="A Cat", negative_prompt="blurry")) < 1e-5


def test_callback_on_step_end(pipes):
    ref, ours = pipes
    seen = {}

    def record(pipe, i, t, names):
        seen.setdefault(id(pipe), []).append((i, sorted(names)))
        return {"latents": names["latents"] * 0.5}

    names = ["latents", "prompt_embeds", "attention_mask", "negative_attention_mask"]
    a = _run(ref, prompt="a cat", callback_on_step_end=record, callback_on_step_end_tensor_inputs=names)
    b = _run(ours, prompt="a cat", callback_on_step_end=record, callback_on_step_end_tensor_inputs=names)
    assert seen[id(ours)] == [(0, sorted(names)), (1, sorted(names))]
    assert max_diff(a, b) < TOL


def test_folders_both_ways(pipes, tmp_path):
    _, ours = pipes
    ours.save_pretrained(tmp_path)
    back = diffusers.Kandinsky3Pipeline.from_pretrained(tmp_path)
    back.set_progress_bar_config(disable=True)
    assert max_diff(_run(back, prompt="a cat"), _run(ours, prompt="a cat")) < TOL


def test_bad_inputs(pipes):
    _, ours = pipes
    embeds, _, mask, _ = ours.encode_prompt("a", False)
    with pytest.raises(ValueError, match="attention_mask is required"):
        ours(prompt_embeds=embeds, **BASE)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        ours(prompt_embeds=embeds, attention_mask=mask[:, :-1], **BASE)
    with pytest.raises(ValueError, match="either prompt or prompt_embeds"):
        ours(prompt="a", prompt_embeds=embeds, attention_mask=mask, **BASE)
    with pytest.raises(ValueError, match="prompt or prompt_embeds is required"):
        ours(**BASE)
    with pytest.raises(TypeError, match="prompt must be a str"):
        ours(prompt=3, **BASE)
    with pytest.raises(TypeError, match="negative_prompt must be of the same type"):
        ours(prompt="a", negative_prompt=["b"], **BASE)
    with pytest.raises(ValueError, match="negative_prompt has 3 entries"):
        ours(prompt=["a", "b"], negative_prompt=["x", "y", "z"], **BASE)
    with pytest.raises(ValueError, match="height must be a positive int"):
        ours(prompt="a", **{**BASE, "height": 0})
    with pytest.raises(ValueError, match="latents must have shape"):
        ours(prompt="a", latents=torch.randn(1, 4, 4, 4), **BASE)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours(prompt="a", strength=0.5, **BASE)
