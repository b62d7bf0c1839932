"""AnimateDiffVideoToVideoPipeline against Diffusers' with the same tiny weights, and its bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

NAME = "AnimateDiffVideoToVideoPipeline"
BASE = dict(prompt="a cat walks", height=fx.SIZE, width=fx.SIZE, num_inference_steps=4, strength=0.6,
            output_type="np")
ATOL = 1e-3


@pytest.fixture(scope="module")
def ddim():
    return fx.pipelines(NAME)


@pytest.fixture(scope="module")
def euler():
    return fx.pipelines(NAME, sched="EulerDiscreteScheduler")


def _both(pair, **kwargs):
    theirs, ours = pair
    args = {"video": fx.video(), **BASE, **kwargs}
    make = args.pop("generators", lambda: fx.gen(0))
    return ours(**args, generator=make()).frames, theirs(**args, generator=make()).frames


@pytest.mark.parametrize("case", [
    dict(),
    dict(strength=1.0, num_inference_steps=3),
    dict(guidance_scale=1.0),
    dict(enforce_inference_steps=True),
    dict(decode_chunk_size=3),
    dict(video=fx.video(frames=5, size=24), height=None, width=None),  # resized to the UNet's default size
])
def test_matches_diffusers_ddim(ddim, case):
    got, want = _both(ddim, **case)
    assert fx.max_diff(got, want) < ATOL


def test_matches_diffusers_euler_with_two_prompts_negatives_and_generators(euler):
    videos = [fx.video(seed=1), fx.video(seed=2)]
    got, want = _both(euler, video=videos, prompt=["a cat", "the dog"], negative_prompt=["blur", "dark"],
                      generators=lambda: fx.gen(3, 2))
    assert got.shape[0] == 2
    assert fx.max_diff(got, want) < ATOL
    got, want = _both(euler, video=videos, prompt=["a cat", "the dog"])
    assert fx.max_diff(got, want) < ATOL


def test_given_latents_are_denoised_as_they_are(ddim):
    latents = torch.randn(1, 4, fx.FRAMES, 8, 8, generator=fx.gen(4))
    got, want = _both(ddim, video=None, latents=latents)
    assert fx.max_diff(got, want) < ATOL
    got, want = _both(ddim, video=None, latents=latents, enforce_inference_steps=True)
    assert fx.max_diff(got, want) < ATOL


def test_array_and_tensor_videos(ddim):
    frames = np.stack([np.asarray(f, dtype=np.float32) / 255 for f in fx.video()])
    a, want = _both(ddim, video=frames)
    b, _ = _both(ddim, video=torch.from_numpy(frames).permute(0, 3, 1, 2))
    c, _ = _both(ddim)
    assert fx.max_diff(a, want) < ATOL and fx.max_diff(a, b) < 1e-6 and fx.max_diff(a, c) < 1e-5


def test_from_pipe_shares_the_components_of_a_text_to_video_pipeline(ddim):
    import kernel

    text = kernel.component("AnimateDiffPipeline")(**fx.components()[1])
    v2v = kernel.component(NAME).from_pipe(text)
    assert v2v.unet is text.unet and v2v.motion_adapter is text.motion_adapter
    v2v.set_progress_bar_config(disable=True)
    assert v2v(video=fx.video(), **BASE, generator=fx.gen(0)).frames.shape == (1, fx.FRAMES, fx.SIZE, fx.SIZE, 3)


def test_free_init_matches_diffusers(ddim):
    theirs, ours = ddim
    for pipe in (theirs, ours):
        pipe.enable_free_init(num_iters=2, use_fast_sampling=True)
    try:
        got, want = _both(ddim, num_inference_steps=6, strength=0.8)
    finally:
        for pipe in (theirs, ours):
            pipe.disable_free_init()
    assert fx.max_diff(got, want) < ATOL


def test_one_video_serves_several_videos_per_prompt(ddim):
    ours = ddim[1]
    out = ours(video=fx.video(), **BASE, num_videos_per_prompt=2, generator=fx.gen(1, 2)).frames
    assert out.shape[0] == 2 and not np.array_equal(out[0], out[1])
    single = ours(video=fx.video(), **BASE, generator=fx.gen(1)).frames
    assert fx.max_diff(out[:1], single) < 1e-5


@pytest.mark.parametrize("bad, match", [
    (dict(video=None), "video is required"),
    (dict(video="clip.mp4"), "video must be"),
    (dict(strength=1.5), r"strength must be a number in \[0.0, 1.0\]"),
    (dict(strength=0.1), "leaves no denoising step"),
    (dict(video=[fx.video(seed=1), fx.video(seed=2), fx.video(seed=3)], prompt=["a", "b"]),
     "got 3 videos for a batch of 2"),
    (dict(video=fx.video(frames=9)), r"num_frames=9 is more than the motion modules cover"),
    (dict(height=21), "height must be a positive multiple of 2"),
    (dict(video=None, latents=torch.zeros(1, 4, 3, 8)), "latents must be a"),
    (dict(video=None, latents=torch.zeros(1, 4, 3, 4, 4)), r"latents must have shape \(1, 4, 3, 8, 8\)"),
    (dict(enforce_inference_steps=True, strength=0.0), "needs strength > 0"),
])
def test_bad_input(ddim, bad, match):
    with pytest.raises(ValueError, match=match):
        ddim[1](**{"video": fx.video(), **BASE, **bad})
