"""AnimateDiffPipeline against Diffusers' with the same tiny weights, plus folders, registry and bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusers
import kernel
from kernel.pipeline import DiffusionPipeline
from kernel_animatediff import AnimateDiffPipeline, AnimateDiffPipelineOutput, MotionAdapter, UNetMotionModel

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

BASE = dict(prompt="a cat walks", num_frames=fx.FRAMES, height=fx.SIZE, width=fx.SIZE, num_inference_steps=2,
            output_type="np")
ATOL = 1e-3


@pytest.fixture(scope="module")
def ddim():
    return fx.pipelines()


@pytest.fixture(scope="module")
def euler():
    return fx.pipelines(sched="EulerDiscreteScheduler")


def _both(pair, **kwargs):
    theirs, ours = pair
    args = {**BASE, **kwargs}
    seed = args.pop("seed", 0)
    g = args.pop("generator", None)
    want = theirs(**args, generator=g() if callable(g) else fx.gen(seed)).frames
    got = ours(**args, generator=g() if callable(g) else fx.gen(seed)).frames
    return got, want


def test_unet_becomes_a_motion_unet(ddim):
    assert isinstance(ddim[1].unet, UNetMotionModel)
    assert ddim[1].config["unet"] == ["diffusers", "UNetMotionModel"]


@pytest.mark.parametrize("case", [
    dict(),
    dict(guidance_scale=1.0),
    dict(prompt=["a cat walks", "the dog"], negative_prompt=["blurry", "dark"]),
    dict(num_frames=7, num_inference_steps=3, seed=4),
    dict(height=24, width=32),
])
def test_matches_diffusers_ddim(ddim, case):
    got, want = _both(ddim, **case)
    assert fx.max_diff(got, want) < ATOL


@pytest.mark.parametrize("case", [dict(), dict(prompt=["a", "b"], generator=lambda: fx.gen(3, 2))])
def test_matches_diffusers_euler(euler, case):
    got, want = _both(euler, **case)
    assert fx.max_diff(got, want) < ATOL


def test_explicit_latents_and_prompt_embeds(ddim):
    latents = torch.randn(1, 4, fx.FRAMES, 8, 8, generator=fx.gen(9))
    got, want = _both(ddim, latents=latents)
    assert fx.max_diff(got, want) < ATOL
    embeds = torch.randn(1, 7, 32, generator=fx.gen(2))
    got, want = _both(ddim, prompt=None, prompt_embeds=embeds, negative_prompt_embeds=-embeds)
    assert fx.max_diff(got, want) < ATOL


def test_num_videos_per_prompt_makes_one_video_per_generator(ddim):
    """Diffusers 0.42 ignores num_videos_per_prompt; ours honours it: video i is Diffusers' video for generator i."""
    theirs, ours = ddim
    out = ours(**BASE, num_videos_per_prompt=2, generator=fx.gen(5, 2)).frames
    assert out.shape[0] == 2
    for i in range(2):
        want = theirs(**BASE, generator=fx.gen(5 + i)).frames
        assert fx.max_diff(out[i:i + 1], want) < ATOL


@pytest.mark.parametrize("output_type", ["pt", "pil", "latent"])
def test_output_types_match_diffusers(ddim, output_type):
    got, want = _both(ddim, output_type=output_type)
    if output_type == "pil":
        assert len(got) == 1 and len(got[0]) == fx.FRAMES and got[0][0].size == (fx.SIZE, fx.SIZE)
        assert fx.max_diff(got, want) <= 1 / 255 + 1e-6
        return
    expected = (1, fx.FRAMES, 3, fx.SIZE, fx.SIZE) if output_type == "pt" else (1, 4, fx.FRAMES, 8, 8)
    assert tuple(got.shape) == expected
    assert fx.max_diff(got, want) < ATOL


def test_decode_chunk_size(ddim):
    got, want = _both(ddim, decode_chunk_size=3)
    assert fx.max_diff(got, want) < ATOL
    whole, _ = _both(ddim, decode_chunk_size=16)
    assert fx.max_diff(got, whole) < 1e-5


def test_return_dict_false_and_callback_editing_latents(ddim):
    theirs, ours = ddim

    def halve(pipe, i, t, tensors):
        return {"latents": tensors["latents"] * 0.5} if i == 0 else {}

    out = ours(**BASE, generator=fx.gen(0), callback_on_step_end=halve, return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1
    want = theirs(**BASE, generator=fx.gen(0), callback_on_step_end=halve).frames
    assert fx.max_diff(out[0], want) < ATOL
    assert isinstance(ours(**BASE, generator=fx.gen(0)), AnimateDiffPipelineOutput)


@pytest.mark.parametrize("settings", [
    dict(num_iters=2, use_fast_sampling=True),
    dict(num_iters=2, method="gaussian", spatial_stop_frequency=0.4),
    dict(num_iters=2, method="ideal", order=2, temporal_stop_frequency=0.5),
])
def test_free_init_matches_diffusers(ddim, settings):
    # (Diffusers' FreeInit cannot run Euler: its add_noise looks up timestep 999, which is not in the schedule.)
    theirs, ours = ddim
    plain, _ = _both(ddim)
    for pipe in (theirs, ours):
        pipe.enable_free_init(**settings)
    try:
        got, want = _both(ddim, num_inference_steps=3)
    finally:
        for pipe in (theirs, ours):
            pipe.disable_free_init()
    assert fx.max_diff(got, want) < ATOL
    assert not ours.free_init_enabled
    again, _ = _both(ddim)
    assert fx.max_diff(again, plain) == 0.0


def test_diffusers_folder_loads_here_and_ours_in_diffusers(tmp_path, ddim):
    theirs, ours = ddim
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "theirs")
    assert type(loaded) is AnimateDiffPipeline
    assert isinstance(loaded.unet, UNetMotionModel) and isinstance(loaded.motion_adapter, MotionAdapter)
    loaded.set_progress_bar_config(disable=True)
    want = theirs(**BASE, generator=fx.gen(0)).frames
    assert fx.max_diff(loaded(**BASE, generator=fx.gen(0)).frames, want) < ATOL

    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.AnimateDiffPipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    assert fx.max_diff(back(**BASE, generator=fx.gen(0)).frames, want) < ATOL
    assert kernel.load(str(tmp_path / "ours")).__class__ is AnimateDiffPipeline
    assert kernel.load("animatediff", str(tmp_path / "theirs")).__class__ is AnimateDiffPipeline


def test_registered_under_diffusers_names():
    assert kernel.component("AnimateDiffPipeline") is AnimateDiffPipeline
    assert kernel.component("UNetMotionModel") is UNetMotionModel
    assert kernel.component("MotionAdapter") is MotionAdapter
    assert kernel.component("AnimateDiffVideoToVideoPipeline").__name__ == "AnimateDiffVideoToVideoPipeline"


def test_adapter_for_another_unet_is_refused_at_construction():
    _, ours = fx.components(adapter_over={"block_out_channels": (16, 32)})
    with pytest.raises(ValueError, match=r"widths \[16, 32\].*widths \[8, 16\]"):
        AnimateDiffPipeline(**ours)
    _, ours = fx.components()
    with pytest.raises(TypeError, match="motion_adapter must be a MotionAdapter"):
        AnimateDiffPipeline(**{**ours, "motion_adapter": "adapter"})


@pytest.mark.parametrize("bad, match", [
    (dict(num_frames=0), "num_frames must be a positive int"),
    (dict(num_frames=9), r"num_frames=9 is more than the motion modules cover \(motion_max_seq_length=8\)"),
    (dict(height=21), "height must be a positive multiple of 2"),
    (dict(num_videos_per_prompt=0), "num_videos_per_prompt must be a positive int"),
    (dict(decode_chunk_size=0), "decode_chunk_size must be a positive int"),
    (dict(output_type="gif"), "output_type='gif' is not supported"),
    (dict(latents=torch.zeros(1, 4, 3, 8, 8)), r"latents must have shape \(1, 4, 4, 8, 8\)"),
    (dict(prompt=None), "prompt"),
    (dict(generator=fx.gen(0, 3)), "generator is a list of 3"),
])
def test_bad_input(ddim, bad, match):
    with pytest.raises(ValueError, match=match):
        ddim[1](**{**BASE, **bad})


def test_free_init_bad_settings(ddim):
    pipe = ddim[1]
    for bad, match in [(dict(num_iters=0), "num_iters"), (dict(method="box"), "method='box'"),
                       (dict(order=0), "order"), (dict(spatial_stop_frequency=1.5), "spatial_stop_frequency"),
                       (dict(temporal_stop_frequency=-0.1), "temporal_stop_frequency")]:
        with pytest.raises(ValueError, match=match):
            pipe.enable_free_init(**bad)
    assert not pipe.free_init_enabled


def test_height_not_divisible_by_the_vae_factor_of_8():
    """With an SD-sized VAE (factor 8) a 60-pixel height is refused, naming the factor."""
    _, ours = fx.components()
    vae = kernel.component("AutoencoderKL")(**{**fx.VAE, "block_out_channels": [4, 4, 4, 8],
                                               "down_block_types": ["DownEncoderBlock2D"] * 4,
                                               "up_block_types": ["UpDecoderBlock2D"] * 4})
    pipe = AnimateDiffPipeline(**{**ours, "vae": vae})
    with pytest.raises(ValueError, match="height must be a positive multiple of 8"):
        pipe(**{**BASE, "height": 60, "width": 64})
    assert np.isfinite(pipe(**{**BASE, "height": 64, "width": 64, "output_type": "latent"}).frames.numpy()).all()
