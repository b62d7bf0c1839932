"""CogVideoX frame counts: the VAE's time rule against Diffusers', the pipelines' clear errors for frame counts the VAE
would not give back (where Diffusers silently returns another number of frames), short videos, and given latents on
the DPM scheduler path against Diffusers (1e-3)."""

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

from kernel_cogvideo import (  # noqa: E402
    AutoencoderKLCogVideoX,
    CogVideoXDPMScheduler,
    CogVideoXFunControlPipeline,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    CogVideoXVideoToVideoPipeline,
)
from kernel_cogvideo.autoencoder import cogvideox_decoded_frames, cogvideox_latent_frames  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
ATOL = 1e-3
BASE = {"prompt": "a cat", "height": fx.SIZE, "width": fx.SIZE, "num_inference_steps": 2, "max_sequence_length": 16,
        "output_type": "pt"}


@functools.lru_cache(maxsize=None)
def _vaes():
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLCogVideoX(**fx.VAE).eval()
    ours = AutoencoderKLCogVideoX(**fx.VAE).eval()
    fx.transfer(ref, ours)
    return ours, ref


def test_frame_rule_matches_diffusers_vae():
    ours, ref = _vaes()
    with torch.no_grad():
        for frames in (1, 2, 5, 6, 8, 9, 10):
            x = torch.rand(1, 3, frames, 8, 8, generator=torch.Generator().manual_seed(frames)) * 2 - 1
            n = ref.encode(x).latent_dist.mode().shape[2]
            assert ours.num_latent_frames(frames) == n == 1 + (frames - 1) // 4, frames
        for latent in (1, 2, 3, 4):
            z = torch.randn(1, 4, latent, 1, 1)
            assert ours.num_decoded_frames(latent) == ref.decode(z).sample.shape[2], latent
    # the full-size models: 49 frames <-> 13 latent frames (1.0), 81 <-> 21 (1.5)
    assert cogvideox_latent_frames(49) == 13 and cogvideox_decoded_frames(13) == 49
    assert cogvideox_latent_frames(81) == 21 and cogvideox_decoded_frames(21) == 81
    assert [cogvideox_decoded_frames(f) for f in range(1, 7)] == [1, 8, 9, 16, 17, 24]


@functools.lru_cache(maxsize=None)
def _t2v(variant: str = "rotary"):
    extra = {"rotary": {}, "patch_t": {"patch_size_t": 2}}[variant]
    ours, ref = fx.pipeline_parts(use_rotary_positional_embeddings=True, **extra)
    pipe, ref_pipe = CogVideoXPipeline(**ours), diffusers.CogVideoXPipeline(**ref)
    pipe.set_progress_bar_config(disable=True)
    ref_pipe.set_progress_bar_config(disable=True)
    return pipe, ref_pipe


@pytest.mark.parametrize("frames, latent, decoded", [(5, 2, 8), (6, 2, 8), (7, 2, 8), (10, 3, 9), (13, 4, 16)])
def test_num_frames_the_vae_would_change_is_an_error(frames, latent, decoded):
    pipe, ref = _t2v()
    # Diffusers runs such a call and returns another number of frames
    assert ref(**{**BASE, "num_inference_steps": 1}, num_frames=frames).frames.shape[1] == decoded
    with pytest.raises(ValueError, match=rf"num_frames={frames} gives {latent} latent frames, which the VAE decodes "
                                         rf"to {decoded} frames.*1, 8, 9, 16, 17, 24"):
        pipe(**BASE, num_frames=frames)


@pytest.mark.parametrize("variant, frames", [("rotary", 8), ("rotary", 1), ("patch_t", 8), ("patch_t", 9)])
def test_every_count_the_vae_gives_back_still_matches_diffusers(variant, frames):
    """Even latent counts (8 frames) and 1.5's padding to patch_size_t (9 frames: 3 latent frames + 1) keep working."""
    pipe, ref = _t2v(variant)
    expected = ref(**BASE, num_frames=frames, generator=torch.Generator().manual_seed(0)).frames
    got = pipe(**BASE, num_frames=frames, generator=torch.Generator().manual_seed(0)).frames
    assert got.shape == expected.shape == (1, frames, 3, fx.SIZE, fx.SIZE)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_temporal_patches_do_not_rescue_a_count_the_vae_changes():
    pipe, _ = _t2v("patch_t")
    with pytest.raises(ValueError, match="num_frames=6 gives 2 latent frames.*the nearest are 1 and 8"):
        pipe(**BASE, num_frames=6)


def test_image_to_video_and_control_refuse_such_counts():
    ours, _ = fx.pipeline_parts(use_rotary_positional_embeddings=True, in_channels=8)
    i2v = CogVideoXImageToVideoPipeline(**ours)
    with pytest.raises(ValueError, match="num_frames=12 gives 3 latent frames, which the VAE decodes to 9 frames"):
        i2v(**BASE, image=fx.video(1)[0], num_frames=12)
    control = CogVideoXFunControlPipeline(**ours)
    with pytest.raises(ValueError, match="control_video has 6 frames; it gives 2 latent frames.*8 frames"):
        control(**BASE, control_video=fx.video(frames=6))


@functools.lru_cache(maxsize=None)
def _v2v():
    ours, _ = fx.pipeline_parts(use_rotary_positional_embeddings=True)
    pipe = CogVideoXVideoToVideoPipeline(**ours)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("video, match", [
    ([], "video is empty: pass at least one frame"),
    (torch.zeros(0, 3, fx.SIZE, fx.SIZE), "video is empty"),
    (torch.zeros(1, 0, 3, fx.SIZE, fx.SIZE), "video is empty"),
    (fx.video(frames=5), "video has 5 frames; it gives 2 latent frames, which the VAE decodes to 8 frames"),
    (fx.video(frames=3), "video has 3 frames; it gives 1 latent frames, which the VAE decodes to 1 frames.*nearest "
                         "are 1 and 8"),
], ids=["empty-list", "empty-tensor", "no-frames-in-batch", "5-frames", "3-frames"])
def test_video_to_video_needs_a_video_the_vae_gives_back(video, match):
    with pytest.raises(ValueError, match=match):
        _v2v()(**BASE, video=video, strength=0.8)


def test_video_to_video_strength_must_leave_a_step():
    with pytest.raises(ValueError, match="strength"):
        _v2v()(**BASE, video=fx.video(frames=8), strength=0.2)


# ------------------------------------------------------------------ given latents on the DPM path
def _dpm(ours, ref):
    ours["scheduler"] = CogVideoXDPMScheduler(**fx.SCHEDULER)
    ref["scheduler"] = diffusers.CogVideoXDPMScheduler(**fx.SCHEDULER)
    return ours, ref


@pytest.mark.parametrize("kind", ["t2v", "i2v", "v2v"])
def test_given_latents_on_the_dpm_path_match_diffusers(kind):
    if kind == "i2v":
        ours, ref = _dpm(*fx.pipeline_parts(use_rotary_positional_embeddings=True, in_channels=8))
        pipe, ref_pipe = CogVideoXImageToVideoPipeline(**ours), diffusers.CogVideoXImageToVideoPipeline(**ref)
        extra = {"image": fx.video(1)[0], "num_frames": 9}
    else:
        ours, ref = _dpm(*fx.pipeline_parts(use_rotary_positional_embeddings=True))
        if kind == "t2v":
            pipe, ref_pipe = CogVideoXPipeline(**ours), diffusers.CogVideoXPipeline(**ref)
            extra = {"num_frames": 9}
        else:
            pipe, ref_pipe = CogVideoXVideoToVideoPipeline(**ours), diffusers.CogVideoXVideoToVideoPipeline(**ref)
            extra = {"strength": 0.7, "num_inference_steps": 4}
    for p in (pipe, ref_pipe):
        p.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 3, 4, 2, 2, generator=torch.Generator().manual_seed(7))
    args = {**BASE, "num_inference_steps": 3, **extra, "latents": latents}
    # the DPM step draws noise: the same generator seeds both
    expected = ref_pipe(**args, generator=torch.Generator().manual_seed(1)).frames
    got = pipe(**args, generator=torch.Generator().manual_seed(1)).frames
    assert got.shape == expected.shape == (1, 9, 3, fx.SIZE, fx.SIZE)
    assert expected.std() > 1e-3
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    # the latents are used, not redrawn: other latents give another video
    other = pipe(**{**args, "latents": latents.flip(1)}, generator=torch.Generator().manual_seed(1)).frames
    assert (other - got).abs().max() > 1e-3
