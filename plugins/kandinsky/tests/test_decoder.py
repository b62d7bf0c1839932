"""KandinskyV22Pipeline (text-to-image decoder) against Diffusers: same weights, same numbers; folders both
ways; the learned-variance split under guidance; bad input."""

from __future__ import annotations

import pytest
import torch

import diffusers
import kernel
from kernel_kandinsky import KandinskyV22Pipeline

from kandinsky_fixtures import EMBED, decoder_pipes, embeds, gen, max_diff

STEPS = 3
TOL = 1e-3
SIZE = dict(height=32, width=32)


@pytest.fixture(scope="module")
def pipes():
    return decoder_pipes()


def _latents(batch: int) -> torch.Tensor:
    return torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(9))


CASES = {
    "default": dict(batch=1),
    "batch": dict(batch=2),
    "num_images_per_prompt": dict(batch=2, num_images_per_prompt=2),
    "latents": dict(batch=1, latents=_latents(1)),
    "guidance_off": dict(batch=1, guidance_scale=1.0),
    "strong_guidance": dict(batch=1, guidance_scale=9.0),
    "list_of_embeds": dict(batch=2, as_list=True),
    "generator_list": dict(batch=2, generator=[gen(1), gen(2)]),
}


def _call(pipe, batch=1, as_list=False, output_type="np", generator=None, **kwargs):
    pos, neg = embeds(batch)
    if as_list:
        pos, neg = list(pos.split(1)), list(neg.split(1))
    if generator is not None:
        generator = [torch.Generator().manual_seed(g.initial_seed()) for g in generator]
    return pipe(pos, neg, **SIZE, num_inference_steps=STEPS, generator=generator or gen(), output_type=output_type,
                **kwargs).images


@pytest.mark.parametrize("case", list(CASES))
def test_decoder_matches_diffusers(pipes, case):
    ref, ours = pipes
    a, b = _call(ref, **CASES[case]), _call(ours, **CASES[case])
    assert b.shape == a.shape and max_diff(a, b) < TOL
    assert float(torch.as_tensor(b).std()) > 0.01  # a real picture, not a constant


@pytest.mark.parametrize("output_type", ["pt", "latent", "pil"])
def test_output_types_match_diffusers(pipes, output_type):
    ref, ours = pipes
    a, b = _call(ref, output_type=output_type), _call(ours, output_type=output_type)
    if output_type == "pil":
        import numpy as np

        a, b = np.asarray(a[0], dtype=np.float32), np.asarray(b[0], dtype=np.float32)
        assert max_diff(torch.from_numpy(a), torch.from_numpy(b)) <= 1.0  # 8-bit rounding
    else:
        assert max_diff(a, b) < TOL
    if output_type == "pt":
        assert b.min() < 0  # Diffusers' decoder returns "pt" in [-1, 1]


def test_learned_variance_scheduler_matches_diffusers():
    ref, ours = decoder_pipes(scheduler="DDPMScheduler", variance_type="learned_range")
    a, b = _call(ref, batch=2), _call(ours, batch=2)
    assert max_diff(a, b) < TOL
    # The variance channels are the positive pass's, not guided: a fixed-variance run differs.
    _, fixed = decoder_pipes(scheduler="DDPMScheduler")
    assert max_diff(_call(fixed, batch=2), b) > 1e-3


def test_callback_views_and_replacements_match_diffusers(pipes):
    ref, ours = pipes
    seen = {"ref": [], "ours": []}

    def record(tag):
        def callback(pipe, i, t, tensors):
            seen[tag].append({k: v.clone() for k, v in tensors.items()})
            return {"latents": tensors["latents"] * 0.9}
        return callback

    names = ["latents", "image_embeds", "negative_image_embeds"]
    a = _call(ref, batch=2, callback_on_step_end=record("ref"), callback_on_step_end_tensor_inputs=names)
    b = _call(ours, batch=2, callback_on_step_end=record("ours"), callback_on_step_end_tensor_inputs=names)
    assert max_diff(a, b) < TOL and len(seen["ours"]) == STEPS
    for x, y in zip(seen["ref"], seen["ours"]):
        for name in names:
            assert max_diff(x[name], y[name]) < TOL


def test_dropping_the_negative_in_a_callback_ends_guidance(pipes):
    _, ours = pipes

    def cut(pipe, i, t, tensors):
        return {"image_embeds": tensors["image_embeds"].chunk(2)[-1]} if i == 0 else {}

    guided = _call(ours)
    cut_off = _call(ours, callback_on_step_end=cut, callback_on_step_end_tensor_inputs=["image_embeds"])
    assert max_diff(guided, cut_off) > 1e-4


def test_legacy_callback(pipes):
    _, ours = pipes
    calls = []
    _call(ours, callback=lambda i, t, latents: calls.append(i), callback_steps=2)
    assert calls == [0, 2]
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        _call(ours, bogus=1)


def test_folders_both_ways(pipes, tmp_path):
    ref, ours = pipes
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    back = diffusers.KandinskyV22Pipeline.from_pretrained(tmp_path / "ours")
    mine = kernel.load(str(tmp_path / "theirs"))
    assert isinstance(mine, KandinskyV22Pipeline)
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    assert max_diff(_call(back), _call(mine)) < TOL
    assert max_diff(_call(mine), _call(ours)) < TOL


def test_custom_guider_wraps_with_the_variance_split(pipes):
    from kernel_guiders import ClassifierFreeGuidance

    _, ours = pipes
    ours.guider = ClassifierFreeGuidance(guidance_scale=4.0)
    try:
        set_guider = _call(ours)
    finally:
        ours.guider = None
    assert max_diff(set_guider, _call(ours)) < 1e-6


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(image_embeds=torch.zeros(1, EMBED + 1)), ValueError, "image_embeds has width 33"),
    (dict(negative_image_embeds=torch.zeros(1, 16)), ValueError, "negative_image_embeds has width 16"),
    (dict(negative_image_embeds=torch.zeros(2, EMBED)), ValueError, "must have the shape of image_embeds"),
    (dict(negative_image_embeds=None), ValueError, "negative_image_embeds is required while guidance is on"),
    (dict(height=30), ValueError, "height must be a positive multiple of 4"),
    (dict(width=34), ValueError, "width must be a positive multiple of 4"),
    (dict(image_embeds=None), ValueError, "image_embeds is required"),
    (dict(image_embeds="cat"), TypeError, "image_embeds must be a torch.Tensor"),
    (dict(image_embeds=torch.zeros(1, 2, EMBED)), ValueError, "2-D"),
    (dict(latents=torch.zeros(1, 4, 8, 8)), ValueError, "latents must have shape"),
    (dict(output_type="jpeg"), ValueError, "output_type"),
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale"),
])
def test_bad_input_is_a_clear_error(pipes, kwargs, error, match):
    _, ours = pipes
    pos, neg = embeds(1)
    args = dict(image_embeds=pos, negative_image_embeds=neg, **SIZE, num_inference_steps=STEPS)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ours(**args)


def test_no_negative_needed_without_guidance(pipes):
    ref, ours = pipes
    pos, neg = embeds(1)
    a = ref(pos, neg, **SIZE, num_inference_steps=STEPS, guidance_scale=1.0, generator=gen(), output_type="np").images
    b = ours(pos, None, **SIZE, num_inference_steps=STEPS, guidance_scale=1.0, generator=gen(), output_type="np").images
    assert max_diff(a, b) < TOL
