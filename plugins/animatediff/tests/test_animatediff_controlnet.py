"""AnimateDiffControlNetPipeline against Diffusers' with the same tiny weights, plus folders and bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import diffusers
import kernel
from kernel.pipeline import DiffusionPipeline
from kernel_animatediff.controlnet import AnimateDiffControlNetPipeline

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

# Matches fx.UNET; the tiny VAE halves the size, so the control encoder downsamples once.
CN = dict(block_out_channels=(8, 16), layers_per_block=1, in_channels=4, cross_attention_dim=32, norm_num_groups=2,
          attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
          conditioning_embedding_out_channels=(4, 8))
ZERO_INIT = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")
BASE = dict(prompt="a cat walks", num_frames=fx.FRAMES, height=fx.SIZE, width=fx.SIZE, num_inference_steps=2,
            output_type="np")
ATOL = 1e-3


def controlnet_pair(seed: int = 5):
    """(Diffusers' ControlNetModel, ours), same weights; the zero-initialised output convs are randomised so the
    nets change the result."""
    torch.manual_seed(seed)
    theirs = diffusers.ControlNetModel(**CN).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.startswith(ZERO_INIT):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return theirs, fx.ours_of(theirs)


def pipelines(nets: int = 1):
    d, k = fx.components()
    pairs = [controlnet_pair(5 + i) for i in range(nets)]
    dcn = pairs[0][0] if nets == 1 else [p[0] for p in pairs]
    kcn = pairs[0][1] if nets == 1 else [p[1] for p in pairs]
    theirs = diffusers.AnimateDiffControlNetPipeline(**d, controlnet=dcn)
    ours = AnimateDiffControlNetPipeline(**k, controlnet=kcn)
    theirs.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(disable=True)
    return theirs, ours


@pytest.fixture(scope="module")
def one():
    return pipelines()


@pytest.fixture(scope="module")
def two():
    return pipelines(2)


def _both(pair, **kwargs):
    theirs, ours = pair
    args = {**BASE, "conditioning_frames": fx.video(seed=3), **kwargs}
    a = theirs(**args, generator=fx.gen(0)).frames
    b = ours(**args, generator=fx.gen(0)).frames
    return a, b


@pytest.mark.parametrize("kwargs", [
    {},
    {"controlnet_conditioning_scale": 0.5, "guidance_scale": 3.0},
    {"guess_mode": True, "guidance_scale": 1.0},
    {"control_guidance_start": 0.5, "control_guidance_end": 1.0, "num_inference_steps": 3},
    {"control_guidance_end": 0.5, "output_type": "pil"},
], ids=["default", "scale", "guess-mode", "window-late", "window-early-pil"])
def test_matches_diffusers(one, kwargs):
    a, b = _both(one, **kwargs)
    assert fx.max_diff(a, b) < ATOL


def test_controlnet_changes_the_video(one):
    _, ours = one
    args = {**BASE, "conditioning_frames": fx.video(seed=3)}
    full = ours(**args, generator=fx.gen(0)).frames
    none = ours(**args, controlnet_conditioning_scale=0.0, generator=fx.gen(0)).frames
    other = ours(**{**args, "conditioning_frames": fx.video(seed=4)}, generator=fx.gen(0)).frames
    assert fx.max_diff(full, none) > 1e-3
    assert fx.max_diff(full, other) > 1e-3


def test_two_controlnets_match_diffusers(two):
    frames = [fx.video(seed=3), fx.video(seed=4)]
    a, b = _both(two, conditioning_frames=frames, controlnet_conditioning_scale=[0.7, 1.2],
                 control_guidance_start=[0.0, 0.5])
    assert fx.max_diff(a, b) < ATOL


def test_guess_mode_with_guidance_zeroes_the_negative_residuals(one):
    """With classifier-free guidance the nets see the positive rows only (Diffusers' AnimateDiff variant fails
    there): equal to running the UNet's negative pass without residuals."""
    _, ours = one
    args = {**BASE, "conditioning_frames": fx.video(seed=3), "guidance_scale": 5.0, "output_type": "latent"}
    guess = ours(**args, guess_mode=True, generator=fx.gen(0)).frames
    plain = ours(**args, generator=fx.gen(0)).frames
    assert guess.shape == plain.shape == (1, 4, fx.FRAMES, fx.SIZE // 2, fx.SIZE // 2)
    assert fx.max_diff(guess, plain) > 1e-4


def test_folders_both_ways(one, tmp_path):
    theirs, ours = one
    theirs.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "theirs")
    assert type(loaded).__name__ == "AnimateDiffControlNetPipeline"
    loaded.set_progress_bar_config(disable=True)
    args = {**BASE, "conditioning_frames": fx.video(seed=3)}
    ref = theirs(**args, generator=fx.gen(0)).frames
    assert fx.max_diff(loaded(**args, generator=fx.gen(0)).frames, ref) < ATOL
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.AnimateDiffControlNetPipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    assert fx.max_diff(back(**args, generator=fx.gen(0)).frames, ref) < ATOL


def test_registered():
    assert kernel.component("AnimateDiffControlNetPipeline") is AnimateDiffControlNetPipeline


@pytest.mark.parametrize("kwargs, match", [
    ({"conditioning_frames": fx.video(frames=fx.FRAMES - 1)}, "conditioning_frames has 3 frames for num_frames=4"),
    ({"conditioning_frames": None}, "conditioning_frames is required"),
    ({"conditioning_frames": 3}, "conditioning_frames"),
    ({"controlnet_conditioning_scale": [1.0, 2.0]}, "controlnet_conditioning_scale"),
    ({"control_guidance_start": 0.6, "control_guidance_end": 0.4}, "control_guidance_start"),
    ({"guess_mode": "yes"}, "guess_mode"),
], ids=["frame-count", "missing", "not-a-video", "scales", "window", "guess-mode"])
def test_bad_input(one, kwargs, match):
    _, ours = one
    args = {**BASE, "conditioning_frames": fx.video(seed=3), **kwargs}
    with pytest.raises(ValueError, match=match):
        ours(**args)


def test_two_controlnets_need_one_video_each(two):
    _, ours = two
    with pytest.raises(ValueError, match="conditioning_frames has 1 entries for 2 ControlNets"):
        ours(**BASE, conditioning_frames=[fx.video(seed=3)])
    with pytest.raises(ValueError, match="conditioning_frames has 2 frames for num_frames=4"):
        ours(**BASE, conditioning_frames=[fx.video(seed=3), fx.video(frames=2)])


def test_one_control_video_per_prompt(one):
    """Two prompts, one control video each (a 5-D array): each video equals its own single-prompt run, so every
    video's frames meet their own control frames (Diffusers 0.42 takes one prompt here)."""
    import numpy as np

    _, ours = one
    videos = [fx.video(seed=3), fx.video(seed=4)]
    array = np.stack([np.stack([np.asarray(f) for f in v]) for v in videos]) / 255.0  # (2, F, H, W, 3) in [0, 1]
    args = {**BASE, "output_type": "latent"}
    both = ours(**{**args, "prompt": [BASE["prompt"]] * 2}, conditioning_frames=array, generator=fx.gen(0, 2)).frames
    for i in range(2):
        single = ours(**args, conditioning_frames=videos[i], generator=fx.gen(i)).frames
        assert fx.max_diff(both[i:i + 1], single) < 1e-4
    assert fx.max_diff(both[:1], both[1:]) > 1e-3
