"""FreeNoise against Diffusers: windowed motion attention, shuffled noise, frame-keyed prompts; bad settings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kernel_animatediff.free_noise import frame_weights, free_noise_latents

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

BASE = dict(prompt="a cat walks", height=fx.SIZE, width=fx.SIZE, num_inference_steps=2, output_type="np")
ATOL = 1e-3


@pytest.fixture(scope="module")
def t2v():
    return fx.pipelines()


def _with_free_noise(pair, settings, **call):
    theirs, ours = pair
    for pipe in pair:
        pipe.enable_free_noise(**settings)
    try:
        args = {**BASE, **call}
        return ours(**args, generator=fx.gen(0)).frames, theirs(**args, generator=fx.gen(0)).frames
    finally:
        for pipe in pair:
            pipe.disable_free_noise()


@pytest.mark.parametrize("settings, call", [
    # windows (0,4) (2,6) (4,8) (6,10): frames beyond motion_max_seq_length=8
    (dict(context_length=4, context_stride=2), dict(num_frames=10)),
    # (0,4) (4,8) and a last window (6,10) that does not start on the stride
    (dict(context_length=4, context_stride=4, weighting_scheme="flat"), dict(num_frames=10)),
    (dict(context_length=4, context_stride=3, weighting_scheme="delayed_reverse_sawtooth", noise_type="random"),
     dict(num_frames=9, negative_prompt="blurry")),
    (dict(context_length=5, context_stride=2, noise_type="repeat_context"),
     dict(num_frames=12, prompt={0: "a cat", 6: "the dog"}, negative_prompt={0: "blur", 3: "dark"})),
])
def test_text_to_video_matches_diffusers(t2v, settings, call):
    got, want = _with_free_noise(t2v, settings, **call)
    assert got.shape[1] == call["num_frames"]
    assert fx.max_diff(got, want) < ATOL


def test_video_to_video_matches_diffusers():
    pair = fx.pipelines("AnimateDiffVideoToVideoPipeline")
    got, want = _with_free_noise(pair, dict(context_length=4, context_stride=2), video=fx.video(frames=10),
                                 prompt={0: "a cat", 5: "a dog"}, num_inference_steps=4, strength=0.6)
    assert fx.max_diff(got, want) < ATOL


def test_custom_prompt_interpolation_and_disable(t2v):
    theirs, ours = t2v
    seen = []

    def hold(start, end, a, b):
        seen.append((start, end))
        return torch.cat([a] * (end - start + 1))

    got, want = _with_free_noise(t2v, dict(context_length=4, prompt_interpolation_callback=hold), num_frames=6,
                                 prompt={0: "a cat", 3: "a dog"})
    assert (0, 3) in seen and (3, 5) in seen
    assert fx.max_diff(got, want) < ATOL
    assert not ours.free_noise_enabled
    assert all(m.free_noise is None for m in ours.unet.modules() if hasattr(m, "free_noise"))
    with pytest.raises(ValueError, match="enable FreeNoise"):
        ours(**BASE, num_frames=10)


def test_shorter_than_a_window_is_plain_attention(t2v):
    _, ours = t2v
    plain = ours(**BASE, num_frames=3, generator=fx.gen(0)).frames
    ours.enable_free_noise(context_length=4, noise_type="random")
    try:
        windowed = ours(**BASE, num_frames=3, generator=fx.gen(0)).frames
    finally:
        ours.disable_free_noise()
    assert fx.max_diff(plain, windowed) == 0.0


def test_helpers():
    assert frame_weights(4, "pyramid") == [1, 2, 2, 1] and frame_weights(5, "pyramid") == [1, 2, 3, 2, 1]
    assert frame_weights(4, "delayed_reverse_sawtooth") == [0.01, 2, 2, 1]
    assert frame_weights(5, "delayed_reverse_sawtooth") == [0.01, 0.01, 3, 2, 1]
    noise = torch.arange(10.0).reshape(1, 1, 10, 1, 1)
    shuffled = free_noise_latents(noise, 4, 2, "shuffle_context", torch.Generator().manual_seed(0))
    assert torch.equal(shuffled[:, :, :4], noise[:, :, :4])
    values = shuffled.flatten().tolist()
    assert sorted(values[4:6]) == [0.0, 1.0] and sorted(values[6:8]) == [2.0, 3.0]  # windows of earlier frames
    assert torch.equal(free_noise_latents(noise, 4, 2, "random", None), noise)


@pytest.mark.parametrize("settings, error, match", [
    (dict(context_length=9), ValueError, r"context_length must be an int in \[1, motion_max_seq_length=8\]"),
    (dict(context_stride=0), ValueError, "context_stride must be a positive int"),
    (dict(weighting_scheme="linear"), ValueError, "weighting_scheme='linear'"),
    (dict(noise_type="zeros"), ValueError, "noise_type='zeros'"),
    (dict(prompt_interpolation_callback=3), TypeError, "prompt_interpolation_callback"),
])
def test_bad_settings(t2v, settings, error, match):
    with pytest.raises(error, match=match):
        t2v[1].enable_free_noise(**{"context_length": 4, **settings})
    assert not t2v[1].free_noise_enabled


@pytest.mark.parametrize("call, match", [
    (dict(prompt={1: "a cat"}), "must start at frame 0"),
    (dict(prompt={0: "a cat", 9: "a dog"}), r"frame index 9, but num_frames=6"),
    (dict(prompt={0: 5}), "values must be str"),
    (dict(prompt={"0": "a"}), "keys must be int"),
    (dict(prompt=["a", "b"]), "must be a str or a dict"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 7, 32)), "not supported with FreeNoise"),
])
def test_bad_prompts(t2v, call, match):
    ours = t2v[1]
    ours.enable_free_noise(context_length=4)
    try:
        with pytest.raises(ValueError, match=match):
            ours(**{**BASE, "num_frames": 6, **call})
    finally:
        ours.disable_free_noise()
