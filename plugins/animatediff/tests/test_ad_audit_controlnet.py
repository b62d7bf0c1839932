"""AnimateDiffControlNetPipeline against Diffusers 0.42.1 over the cases of issue 17 that test_animatediff_controlnet.py
does not cover: a negative prompt, explicit latents, decode_chunk_size, no guidance with tensor output, a scheduler
swap, FreeInit on and off, and FreeNoise (a video longer than the motion modules, per-frame prompts)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import diffusers
import kernel
from kernel.pipeline import DiffusionPipeline

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

BASE = dict(prompt="a cat walks", num_frames=fx.FRAMES, height=fx.SIZE, width=fx.SIZE, num_inference_steps=2,
            output_type="np")
ATOL = 1e-3


def _check(name, got, want):
    diff = fx.max_diff(got, want)
    print(f"max diff {name}: {diff:.2e}")
    assert diff < ATOL, (name, diff)
    return diff


def _swap(pair, name, cls_name):
    """The same pair of pipelines with both schedulers replaced by ``cls_name`` (same config)."""
    theirs, ours = pair
    d_s, k_s = fx.scheduler_pair(cls_name)
    new = (getattr(diffusers, name)(**{**theirs.components, "scheduler": d_s}),
           kernel.component(name).from_pipe(ours, scheduler=k_s))
    for p in new:
        p.set_progress_bar_config(disable=True)
    return new


def _run_both(pair, seed=0, **kwargs):
    theirs, ours = pair
    args = {**BASE, **kwargs}
    torch.manual_seed(42)
    want = theirs(**args, generator=fx.gen(seed)).frames
    torch.manual_seed(42)
    got = ours(**args, generator=fx.gen(seed)).frames
    return got, want


# ------------------------------------------------------------------------------------------ ControlNet
@pytest.fixture(scope="module")
def controlnet():
    from test_animatediff_controlnet import pipelines

    return pipelines()


CN_CASES = [
    (dict(negative_prompt="blurry"), "negative-prompt"),
    (dict(latents=torch.randn(1, 4, fx.FRAMES, 8, 8, generator=fx.gen(9))), "latents"),
    (dict(decode_chunk_size=3), "decode-chunk-size"),
    (dict(output_type="pt", guidance_scale=1.0), "pt-no-guidance"),
]


@pytest.mark.parametrize("kwargs", [c[0] for c in CN_CASES], ids=[c[1] for c in CN_CASES])
def test_controlnet_cases(controlnet, kwargs):
    got, want = _run_both(controlnet, conditioning_frames=fx.video(seed=3), **kwargs)
    _check(f"controlnet {sorted(kwargs)}", got, want)


def test_controlnet_scheduler_swap(controlnet):
    pair = _swap(controlnet, "AnimateDiffControlNetPipeline", "EulerDiscreteScheduler")
    got, want = _run_both(pair, conditioning_frames=fx.video(seed=3))
    _check("controlnet euler", got, want)


def test_controlnet_free_init_on_and_off(controlnet):
    plain, _ = _run_both(controlnet, conditioning_frames=fx.video(seed=3), num_inference_steps=3)
    for pipe in controlnet:
        pipe.enable_free_init(num_iters=2, method="gaussian", use_fast_sampling=True)
    try:
        got, want = _run_both(controlnet, conditioning_frames=fx.video(seed=3), num_inference_steps=3)
    finally:
        for pipe in controlnet:
            pipe.disable_free_init()
    _check("controlnet free-init", got, want)
    assert fx.max_diff(got, plain) > 1e-3
    again, _ = _run_both(controlnet, conditioning_frames=fx.video(seed=3), num_inference_steps=3)
    assert fx.max_diff(again, plain) == 0.0


@pytest.mark.parametrize("call", [
    dict(num_frames=10, prompt="a cat walks"),
    dict(num_frames=10, prompt={0: "a cat", 5: "a dog"}, negative_prompt="blurry"),
], ids=["long", "frame-prompts"])
def test_controlnet_free_noise(controlnet, call):
    for pipe in controlnet:
        pipe.enable_free_noise(context_length=4, context_stride=2)
    try:
        got, want = _run_both(controlnet, conditioning_frames=fx.video(frames=call["num_frames"], seed=3), **call)
    finally:
        for pipe in controlnet:
            pipe.disable_free_noise()
    assert got.shape[1] == call["num_frames"]
    _check(f"controlnet free-noise {sorted(call)}", got, want)


def test_controlnet_videos_per_prompt_are_diffusers_videos_per_generator(controlnet):
    """Diffusers 0.42 sets num_videos_per_prompt to 1; ours makes them: video i is Diffusers' for generator i."""
    theirs, ours = controlnet
    args = {**BASE, "conditioning_frames": fx.video(seed=3)}
    out = ours(**args, num_videos_per_prompt=2, generator=fx.gen(5, 2)).frames
    for i in range(2):
        _check(f"controlnet video {i} of 2", out[i:i + 1], theirs(**args, generator=fx.gen(5 + i)).frames)
