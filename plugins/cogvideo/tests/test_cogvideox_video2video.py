"""CogVideoXVideoToVideoPipeline against Diffusers' on the same tiny random components (1e-3), and its errors."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import cog_fixtures as fx  # noqa: E402
from cog_fixtures import single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")

from kernel_cogvideo import CogVideoXPipeline, CogVideoXVideoToVideoPipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
ATOL = 1e-3


@functools.lru_cache(maxsize=None)
def _pipes():
    ours, ref = fx.pipeline_parts(use_rotary_positional_embeddings=True)
    pipe, ref_pipe = CogVideoXVideoToVideoPipeline(**ours), diffusers.CogVideoXVideoToVideoPipeline(**ref)
    pipe.set_progress_bar_config(disable=True)
    ref_pipe.set_progress_bar_config(disable=True)
    return pipe, ref_pipe


def _args(**kw):
    return {"video": fx.video(), "prompt": "a cat", "height": fx.SIZE, "width": fx.SIZE, "num_inference_steps": 2,
            "max_sequence_length": 16, "output_type": "pt", **kw}


@pytest.mark.parametrize("kw", [
    {},
    {"strength": 0.5, "num_inference_steps": 4},
    {"negative_prompt": "the dog", "use_dynamic_cfg": True, "num_inference_steps": 3},
    {"guidance_scale": 1.0, "strength": 1.0},
    {"prompt": ["a cat", "the dog"]},
    {"output_type": "latent", "video": fx.video(frames=8, seed=3)},
], ids=["default", "strength", "negative-dynamic-cfg", "no-cfg", "batch", "latent"])
def test_matches_diffusers(kw):
    pipe, ref = _pipes()
    args = _args(**kw)
    expected = ref(**args, generator=torch.Generator().manual_seed(0)).frames
    got = pipe(**args, generator=torch.Generator().manual_seed(0)).frames
    assert got.shape == expected.shape
    assert expected.std() > 1e-3
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_given_latents_match_diffusers():
    pipe, ref = _pipes()
    latents = torch.randn(1, 3, 4, 2, 2, generator=torch.Generator().manual_seed(4))
    args = _args(video=None, latents=latents)
    torch.testing.assert_close(pipe(**args).frames, ref(**args).frames, atol=ATOL, rtol=0)


def test_from_pipe_shares_components():
    pipe, _ = _pipes()
    t2v = CogVideoXPipeline.from_pipe(pipe)
    assert t2v.transformer is pipe.transformer and t2v.vae is pipe.vae
    out = t2v(prompt="a cat", height=fx.SIZE, width=fx.SIZE, num_frames=9, num_inference_steps=1,
              max_sequence_length=16, output_type="pt").frames
    assert out.shape == (1, 9, 3, fx.SIZE, fx.SIZE)


@pytest.mark.parametrize("kw, match", [
    ({"video": None}, "video is required"),
    ({"latents": torch.zeros(1, 3, 4, 2, 2)}, "either video or latents"),
    ({"strength": 1.5}, "strength"),
    ({"strength": 0.1, "num_inference_steps": 2}, "strength"),
])
def test_bad_inputs(kw, match):
    pipe, _ = _pipes()
    with pytest.raises(ValueError, match=match):
        pipe(**_args(**kw))


def test_videos_must_fit_the_batch():
    pipe, _ = _pipes()
    two = torch.rand(2, 9, 3, fx.SIZE, fx.SIZE)  # two videos, frames first
    with pytest.raises(ValueError, match="got 2 videos for a batch of 3"):
        pipe(**_args(video=two, prompt=["a", "b", "c"]))
