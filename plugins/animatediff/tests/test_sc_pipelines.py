"""AnimateDiffSparseControlNetPipeline against Diffusers' with the same tiny weights, plus folders and bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import diffusers
import kernel
from kernel.pipeline import DiffusionPipeline
from kernel_animatediff.sparse_control import AnimateDiffSparseControlNetPipeline

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

# Matches fx.UNET / fx.ADAPTER; the tiny VAE halves the size, so the pixel condition encoder downsamples once.
SPARSE = dict(block_out_channels=(8, 16), layers_per_block=1, in_channels=4, cross_attention_dim=32, norm_num_groups=2,
              attention_head_dim=2, down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
              conditioning_embedding_out_channels=(4, 8), motion_num_attention_heads=2, motion_max_seq_length=8)
ZERO_INIT = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")
BASE = dict(prompt="a cat walks", num_frames=fx.FRAMES, height=fx.SIZE, width=fx.SIZE, num_inference_steps=2,
            output_type="np")
ATOL = 1e-3


def sparse_config(simplified: bool) -> dict:
    return {**SPARSE, "use_simplified_condition_embedding": simplified, "conditioning_channels": 4 if simplified else 3}


def randomise(net, seed: int):
    """The zero-initialised convolutions get random weights, so the net changes the result."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(ZERO_INIT):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


def controlnet_pair(simplified: bool, seed: int = 5):
    torch.manual_seed(seed)
    theirs = randomise(diffusers.SparseControlNetModel(**sparse_config(simplified)), seed)
    return theirs, fx.ours_of(theirs)


def pipelines(simplified: bool):
    d, k = fx.components()
    dcn, kcn = controlnet_pair(simplified)
    theirs = diffusers.AnimateDiffSparseControlNetPipeline(**d, controlnet=dcn)
    ours = AnimateDiffSparseControlNetPipeline(**k, controlnet=kcn)
    theirs.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(disable=True)
    return theirs, ours


@pytest.fixture(scope="module")
def pixel():
    return pipelines(simplified=False)


@pytest.fixture(scope="module")
def latent():
    return pipelines(simplified=True)


def _run(pipe, **kwargs):
    args = {**BASE, "conditioning_frames": fx.video(frames=1, seed=3), **kwargs}
    torch.manual_seed(42)  # the VAE sample of the condition images (simplified embedding) uses the global state
    return pipe(**args, generator=fx.gen(0)).frames


def _both(pair, **kwargs):
    theirs, ours = pair
    return _run(theirs, **kwargs), _run(ours, **kwargs)


CASES = [
    ({}, "default"),
    ({"conditioning_frames": fx.video(frames=3, seed=3), "controlnet_frame_indices": [0, 2, 3]}, "three-frames"),
    ({"controlnet_conditioning_scale": 0.5, "guidance_scale": 3.0}, "scale"),
    ({"guess_mode": True, "guidance_scale": 1.0}, "guess-mode"),
    ({"negative_prompt": "blurry", "controlnet_frame_indices": [2]}, "negative-prompt"),
    ({"prompt": ["a cat walks", "the dog"], "negative_prompt": ["ugly", "dark"]}, "two-prompts"),
]


@pytest.mark.parametrize("kwargs", [c[0] for c in CASES], ids=[c[1] for c in CASES])
def test_pixel_condition_matches_diffusers(pixel, kwargs):
    a, b = _both(pixel, **kwargs)
    assert fx.max_diff(a, b) < ATOL


@pytest.mark.parametrize("kwargs", [c[0] for c in CASES] + [{"output_type": "pil"}],
                         ids=[c[1] for c in CASES] + ["pil"])
def test_latent_condition_matches_diffusers(latent, kwargs):
    a, b = _both(latent, **kwargs)
    assert fx.max_diff(a, b) < ATOL


def test_the_condition_changes_the_video(pixel):
    _, ours = pixel
    base = _run(ours, output_type="latent")
    assert fx.max_diff(base, _run(ours, output_type="latent", controlnet_conditioning_scale=0.0)) > 1e-3
    assert fx.max_diff(base, _run(ours, output_type="latent", conditioning_frames=fx.video(frames=1, seed=4))) > 1e-3
    assert fx.max_diff(base, _run(ours, output_type="latent", controlnet_frame_indices=[3])) > 1e-3


def test_free_init_matches_diffusers(pixel):
    theirs, ours = pixel
    for pipe in pixel:
        pipe.enable_free_init(num_iters=2, method="gaussian", spatial_stop_frequency=0.3, temporal_stop_frequency=0.3)
    try:
        a, b = _both(pixel, output_type="latent")
    finally:
        for pipe in pixel:
            pipe.disable_free_init()
    assert fx.max_diff(a, b) < ATOL
    assert fx.max_diff(b, _run(ours, output_type="latent")) > 1e-3


def test_free_noise_is_refused(pixel):
    with pytest.raises(ValueError, match="FreeNoise is not available"):
        pixel[1].enable_free_noise(context_length=4)


def test_guidance_window(pixel):
    """The window from Diffusers' other ControlNet pipelines: outside it the net does not run, so a window that holds
    no step equals Diffusers with scale 0, and the full window equals the default."""
    theirs, ours = pixel
    off = _run(ours, control_guidance_start=0.6, control_guidance_end=1.0)  # steps at 0/2 and 1/2 both start early
    assert fx.max_diff(off, _run(theirs, controlnet_conditioning_scale=0.0)) < ATOL
    late = _run(ours, control_guidance_start=0.5, control_guidance_end=1.0)
    assert fx.max_diff(late, off) > 1e-4 and fx.max_diff(late, _run(ours)) > 1e-4


def test_guess_mode_with_guidance_zeroes_the_negative_residuals(pixel):
    """With classifier-free guidance the net sees the positive rows only (Diffusers 0.42 fails there)."""
    _, ours = pixel
    guess = _run(ours, guess_mode=True, guidance_scale=5.0, output_type="latent")
    plain = _run(ours, guidance_scale=5.0, output_type="latent")
    assert guess.shape == plain.shape == (1, 4, fx.FRAMES, fx.SIZE // 2, fx.SIZE // 2)
    assert fx.max_diff(guess, plain) > 1e-4


def test_decode_chunk_size_keeps_the_frames(pixel):
    _, ours = pixel
    assert fx.max_diff(_run(ours, decode_chunk_size=1), _run(ours)) < 1e-5


def test_folders_both_ways(pixel, tmp_path):
    theirs, ours = pixel
    theirs.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "theirs")
    assert type(loaded).__name__ == "AnimateDiffSparseControlNetPipeline"
    assert type(loaded.controlnet).__name__ == "SparseControlNetModel"
    loaded.set_progress_bar_config(disable=True)
    ref = _run(theirs)
    assert fx.max_diff(_run(loaded), ref) < ATOL
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.AnimateDiffSparseControlNetPipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    assert fx.max_diff(_run(back), ref) < ATOL


def test_registered():
    assert kernel.component("AnimateDiffSparseControlNetPipeline") is AnimateDiffSparseControlNetPipeline


@pytest.mark.parametrize("kwargs, match", [
    ({"conditioning_frames": fx.video(frames=2)}, r"conditioning_frames has 2 image\(s\) for 1 controlnet_frame_indices"),
    ({"conditioning_frames": fx.video(frames=1), "controlnet_frame_indices": [0, 1]},
     r"has 1 image\(s\) for 2 controlnet_frame_indices"),
    ({"controlnet_frame_indices": [fx.FRAMES]}, r"controlnet_frame_indices \[4\] are outside the video"),
    ({"controlnet_frame_indices": [-1]}, "outside the video"),
    ({"conditioning_frames": fx.video(frames=2), "controlnet_frame_indices": [1, 1]}, "repeats a frame"),
    ({"controlnet_frame_indices": []}, "non-empty list of frame numbers"),
    ({"controlnet_frame_indices": 0}, "non-empty list of frame numbers"),
    ({"conditioning_frames": None}, "conditioning_frames is required"),
    ({"conditioning_frames": 3}, "conditioning_frames must be a PIL image"),
    ({"conditioning_frames": torch.full((1, 3, fx.SIZE, fx.SIZE), -1.0)}, r"in \[0, 1\]"),
    ({"controlnet_conditioning_scale": [1.0, 2.0]}, "controlnet_conditioning_scale"),
    ({"control_guidance_start": 0.6, "control_guidance_end": 0.4}, "control_guidance_start"),
    ({"guess_mode": "yes"}, "guess_mode"),
], ids=["more-images", "fewer-images", "index-past-end", "negative-index", "repeated", "empty", "not-a-list",
        "missing", "not-an-image", "range", "scales", "window", "guess-mode"])
def test_bad_input(pixel, kwargs, match):
    _, ours = pixel
    args = {**BASE, "conditioning_frames": fx.video(frames=1, seed=3), **kwargs}
    with pytest.raises(ValueError, match=match):
        ours(**args)


def test_one_net_only(pixel):
    _, ours = pixel
    parts = {k: v for k, v in ours.components.items() if k != "controlnet"}
    with pytest.raises(ValueError, match="takes one SparseControlNetModel"):
        AnimateDiffSparseControlNetPipeline(**parts, controlnet=[ours.controlnet, ours.controlnet])
    with pytest.raises(ValueError, match="controlnet must be a SparseControlNetModel"):
        AnimateDiffSparseControlNetPipeline(**parts, controlnet=kernel.component("ControlNetModel")(
            block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=32, norm_num_groups=2,
            attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            conditioning_embedding_out_channels=(4, 8)))


def test_from_pipe_of_the_text_to_video_pipeline(pixel):
    _, ours = pixel
    _, text2video = fx.pipelines()  # the same components as the fixture's
    sparse = AnimateDiffSparseControlNetPipeline.from_pipe(text2video, controlnet=controlnet_pair(False)[1])
    sparse.set_progress_bar_config(disable=True)
    assert sparse.unet is text2video.unet
    assert fx.max_diff(_run(sparse, output_type="latent"), _run(ours, output_type="latent")) < 1e-6
