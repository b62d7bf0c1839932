"""Issue 17's parity cases that the per-pipeline test files left out, against Diffusers 0.42.1: SparseCtrl with
explicit latents and a swapped scheduler; video-to-video folders both ways, tensor and latent outputs and a
multistep scheduler; SDXL with two prompts and a generator each, num_videos_per_prompt and PIL output; text-to-video with a
multistep scheduler; FreeNoise with explicit latents, with a swapped scheduler, with decode_chunk_size and off again
after disable_free_noise."""

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
V2V = dict(prompt="a cat walks", height=fx.SIZE, width=fx.SIZE, num_inference_steps=4, strength=0.6, output_type="np")
ATOL = 1e-3
BASE_10 = {**BASE, "num_frames": 10}


def _check(name, got, want, atol=ATOL):
    diff = fx.max_diff(got, want)
    print(f"max diff {name}: {diff:.2e}")
    assert diff < atol, (name, diff)
    return diff


def _swap(pair, name, cls_name, **over):
    theirs, ours = pair
    d_s, k_s = fx.scheduler_pair(cls_name, **over)
    new = (getattr(diffusers, name)(**{**theirs.components, "scheduler": d_s}),
           kernel.component(name).from_pipe(ours, scheduler=k_s))
    for p in new:
        p.set_progress_bar_config(disable=True)
    return new


def _run_both(pair, base=BASE, generators=None, **kwargs):
    theirs, ours = pair
    args = {**base, **kwargs}
    make = generators or (lambda: fx.gen(0))
    torch.manual_seed(42)  # SparseCtrl's simplified embedding samples the VAE with the global generator
    want = theirs(**args, generator=make()).frames
    torch.manual_seed(42)
    got = ours(**args, generator=make()).frames
    return got, want


# ------------------------------------------------------------------------------------------ SparseCtrl
@pytest.fixture(scope="module")
def sparse():
    from test_sc_pipelines import pipelines

    return pipelines(simplified=False)


def test_sparse_control_explicit_latents(sparse):
    latents = torch.randn(1, 4, fx.FRAMES, 8, 8, generator=fx.gen(9))
    got, want = _run_both(sparse, conditioning_frames=fx.video(frames=1, seed=3), latents=latents)
    _check("sparsectrl latents", got, want)


def test_sparse_control_scheduler_swap(sparse):
    pair = _swap(sparse, "AnimateDiffSparseControlNetPipeline", "EulerDiscreteScheduler")
    got, want = _run_both(pair, conditioning_frames=fx.video(frames=2, seed=3), controlnet_frame_indices=[0, 3])
    _check("sparsectrl euler", got, want)


def test_sparse_control_videos_per_prompt_are_diffusers_videos_per_generator(sparse):
    theirs, ours = sparse
    args = {**BASE, "conditioning_frames": fx.video(frames=1, seed=3)}
    out = ours(**args, num_videos_per_prompt=2, generator=fx.gen(5, 2)).frames
    for i in range(2):
        _check(f"sparsectrl video {i} of 2", out[i:i + 1], theirs(**args, generator=fx.gen(5 + i)).frames)


# ------------------------------------------------------------------------------------------ video-to-video
@pytest.fixture(scope="module")
def v2v():
    return fx.pipelines("AnimateDiffVideoToVideoPipeline")


def test_video_to_video_folders_both_ways(v2v, tmp_path):
    theirs, ours = v2v
    args = {**V2V, "video": fx.video()}
    want = theirs(**args, generator=fx.gen(0)).frames
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "theirs")
    assert type(loaded).__name__ == "AnimateDiffVideoToVideoPipeline"
    assert type(loaded.unet).__name__ == "UNetMotionModel"
    loaded.set_progress_bar_config(disable=True)
    _check("v2v diffusers folder here", loaded(**args, generator=fx.gen(0)).frames, want)
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.AnimateDiffVideoToVideoPipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    _check("v2v our folder in diffusers", back(**args, generator=fx.gen(0)).frames, want)


@pytest.mark.parametrize("output_type", ["pt", "latent"])
def test_video_to_video_output_types(v2v, output_type):
    got, want = _run_both(v2v, base=V2V, video=fx.video(), output_type=output_type)
    _check(f"v2v {output_type}", got, want)


def test_video_to_video_multistep_scheduler_and_strength(v2v):
    pair = _swap(v2v, "AnimateDiffVideoToVideoPipeline", "DPMSolverMultistepScheduler")
    got, want = _run_both(pair, base=V2V, video=fx.video(), strength=0.75, num_inference_steps=5)
    _check("v2v dpm++ strength 0.75", got, want)


def test_video_to_video_videos_per_prompt_are_diffusers_videos_per_generator(v2v):
    theirs, ours = v2v
    args = {**V2V, "video": fx.video()}
    out = ours(**args, num_videos_per_prompt=2, generator=fx.gen(5, 2)).frames
    for i in range(2):
        _check(f"v2v video {i} of num_videos_per_prompt=2", out[i:i + 1], theirs(**args, generator=fx.gen(5 + i)).frames)


@pytest.mark.parametrize("kwargs", [
    dict(timesteps=[999, 800, 600, 400, 200, 50]),
    dict(sigmas=[14.0, 8.0, 4.0, 2.0, 1.0, 0.5]),
    dict(timesteps=[999, 700, 300, 10], enforce_inference_steps=True, num_inference_steps=3),
    dict(sigmas=[14.0, 6.0, 2.0, 0.5], enforce_inference_steps=True, num_inference_steps=2, strength=0.5),
], ids=["timesteps", "sigmas", "timesteps-enforced", "sigmas-enforced"])
def test_video_to_video_custom_schedules(v2v, kwargs):
    """Custom timesteps / sigmas, trimmed by strength or (enforce_inference_steps) their last steps taken."""
    pair = _swap(v2v, "AnimateDiffVideoToVideoPipeline", "EulerDiscreteScheduler")
    got, want = _run_both(pair, base=V2V, video=fx.video(), **kwargs)
    _check(f"v2v euler {kwargs}", got, want)


def test_video_to_video_free_init_and_free_noise_off_again(v2v):
    args = dict(base=V2V, video=fx.video())
    plain, want_plain = _run_both(v2v, **args)
    for pipe in v2v:
        pipe.enable_free_init(num_iters=2)
        pipe.enable_free_noise(context_length=2, context_stride=1)
    try:
        on, want_on = _run_both(v2v, **args)
    finally:
        for pipe in v2v:
            pipe.disable_free_init()
            pipe.disable_free_noise()
    _check("v2v free-init + free-noise on", on, want_on)
    assert fx.max_diff(on, plain) > 1e-3
    off, want_off = _run_both(v2v, **args)
    assert fx.max_diff(off, plain) == 0.0
    _check("v2v both off again", off, want_off)


# ------------------------------------------------------------------------------------------ text-to-video
@pytest.fixture(scope="module")
def t2v():
    return fx.pipelines()


def test_text_to_video_multistep_scheduler(t2v):
    pair = _swap(t2v, "AnimateDiffPipeline", "DPMSolverMultistepScheduler")
    got, want = _run_both(pair, num_inference_steps=3, prompt=["a cat walks", "the dog"], negative_prompt=["dark", "wet"],
                          generators=lambda: fx.gen(3, 2))
    _check("t2v dpm++ two prompts", got, want)


def _free_noise(pair, settings, run):
    for pipe in pair:
        pipe.enable_free_noise(**settings)
    try:
        return run()
    finally:
        for pipe in pair:
            pipe.disable_free_noise()


def test_free_init_videos_per_prompt_are_diffusers_videos_per_generator(t2v):
    theirs, ours = t2v
    args = {**BASE, "num_inference_steps": 3}
    for pipe in t2v:
        pipe.enable_free_init(num_iters=2, use_fast_sampling=True)
    try:
        out = ours(**args, num_videos_per_prompt=2, generator=fx.gen(5, 2)).frames
        for i in range(2):
            _check(f"free-init video {i} of num_videos_per_prompt=2", out[i:i + 1],
                   theirs(**args, generator=fx.gen(5 + i)).frames)
    finally:
        for pipe in t2v:
            pipe.disable_free_init()


def test_free_noise_with_explicit_latents_and_chunked_decoding(t2v):
    latents = torch.randn(1, 4, 10, 8, 8, generator=fx.gen(11))
    got, want = _free_noise(t2v, dict(context_length=4, context_stride=2),
                            lambda: _run_both(t2v, num_frames=10, latents=latents, decode_chunk_size=3))
    _check("free-noise latents decode_chunk_size=3", got, want)


def test_free_noise_repeats_one_window_of_latents(t2v):
    """noise_type='repeat_context' tiles latents given for one window (context_length frames) over the video."""
    window = torch.randn(1, 4, 4, 8, 8, generator=fx.gen(12))
    settings = dict(context_length=4, context_stride=2, noise_type="repeat_context")
    got, want = _free_noise(t2v, settings, lambda: _run_both(t2v, num_frames=10, latents=window.clone()))
    _check("free-noise repeat_context window latents", got, want)
    tiled = torch.cat([window] * 3, dim=2)[:, :, :10]
    full = _free_noise(t2v, settings, lambda: t2v[1](**BASE_10, latents=tiled, generator=fx.gen(0)).frames)
    assert fx.max_diff(full, got) == 0.0


def test_free_noise_window_latents_need_repeat_context(t2v):
    """Diffusers fails inside its loop here; ours names the argument and the way out."""
    _, ours = t2v
    ours.enable_free_noise(context_length=4, context_stride=2)
    try:
        with pytest.raises(ValueError, match=r"latents have 4 frames \(one FreeNoise window\) for num_frames=10.*"
                                             "repeat_context"):
            ours(**BASE_10, latents=torch.zeros(1, 4, 4, 8, 8))
    finally:
        ours.disable_free_noise()


def test_free_noise_videos_per_prompt_shuffle_with_their_own_generator(t2v):
    """Diffusers 0.42 makes one video per call; ours makes num_videos_per_prompt, each shuffled by its generator:
    video i is Diffusers' video for generator i."""
    theirs, ours = t2v

    def run():
        out = ours(**BASE_10, num_videos_per_prompt=2, generator=fx.gen(5, 2)).frames
        return out, [theirs(**BASE_10, generator=fx.gen(5 + i)).frames for i in range(2)]

    out, wants = _free_noise(t2v, dict(context_length=4, context_stride=2), run)
    for i, want in enumerate(wants):
        _check(f"free-noise video {i} of num_videos_per_prompt=2", out[i:i + 1], want)


def test_free_noise_with_a_swapped_scheduler(t2v):
    pair = _swap(t2v, "AnimateDiffPipeline", "EulerAncestralDiscreteScheduler")
    got, want = _free_noise(pair, dict(context_length=4, context_stride=3, weighting_scheme="flat"),
                            lambda: _run_both(pair, num_frames=9, prompt={0: "a cat", 4: "a dog"}))
    _check("free-noise euler-a frame prompts", got, want)


def test_free_noise_off_again_matches_diffusers(t2v):
    theirs, ours = t2v
    before, want = _run_both(t2v)
    windowed = _free_noise(t2v, dict(context_length=2, context_stride=1), lambda: _run_both(t2v))
    assert fx.max_diff(windowed[0], before) > 1e-3  # windows of 2 frames change a 4-frame video
    _check("free-noise windows of 2", *windowed)
    assert not ours.free_noise_enabled and not theirs.free_noise_enabled
    after, want_after = _run_both(t2v)
    assert fx.max_diff(after, before) == 0.0
    _check("after disable_free_noise", after, want_after)


# ------------------------------------------------------------------------------------------ SDXL
@pytest.fixture(scope="module")
def sdxl():
    from test_animatediff_sdxl import pipelines

    return pipelines()


def test_sdxl_two_prompts_with_a_generator_each(sdxl):
    got, want = _run_both(sdxl, prompt=["a cat walks", "the dog"], negative_prompt=["blurry", "dark"],
                          generators=lambda: fx.gen(5, 2))
    assert got.shape[0] == 2
    _check("sdxl 2 prompts, 2 generators", got, want)


def test_sdxl_videos_per_prompt_are_diffusers_videos_per_generator(sdxl):
    """Diffusers 0.42 sets num_videos_per_prompt to 1; ours makes them: video i is Diffusers' for generator i."""
    theirs, ours = sdxl
    out = ours(**BASE, num_videos_per_prompt=2, generator=fx.gen(5, 2)).frames
    assert out.shape[0] == 2
    for i in range(2):
        _check(f"sdxl video {i} of num_videos_per_prompt=2", out[i:i + 1], theirs(**BASE, generator=fx.gen(5 + i)).frames)


@pytest.mark.parametrize("sched, kwargs", [
    ("EulerDiscreteScheduler", dict(timesteps=[999, 600, 200])),
    ("EulerDiscreteScheduler", dict(sigmas=[14.0, 3.0, 0.5])),
    (None, dict(denoising_end=0.5, num_inference_steps=4)),
    (None, dict(clip_skip=1, guidance_scale=3.0, prompt_2="another view")),
], ids=["timesteps", "sigmas", "denoising-end", "clip-skip-prompt-2"])
def test_sdxl_schedule_and_prompt_arguments(sdxl, sched, kwargs):
    pair = _swap(sdxl, "AnimateDiffSDXLPipeline", sched) if sched else sdxl
    got, want = _run_both(pair, **kwargs)
    _check(f"sdxl {kwargs}", got, want)


def test_sdxl_pil_output(sdxl):
    got, want = _run_both(sdxl, output_type="pil", negative_prompt="blurry")
    assert len(got) == 1 and len(got[0]) == fx.FRAMES
    _check("sdxl pil", got, want, atol=1 / 255 + 1e-6)


# ------------------------------------------------------------------------------------------ loading as documented
def test_stable_diffusion_folder_with_a_motion_adapter(tmp_path):
    """``AnimateDiffPipeline.from_pretrained(sd_folder, motion_adapter=adapter)``, Diffusers' documented use: the
    folder's 2-D UNet becomes a UNetMotionModel, and the video is Diffusers'."""
    from kernel_animatediff import AnimateDiffPipeline

    d, k = fx.components()
    diffusers.StableDiffusionPipeline(vae=d["vae"], text_encoder=d["text_encoder"], tokenizer=d["tokenizer"],
                                      unet=d["unet"], scheduler=d["scheduler"], safety_checker=None,
                                      feature_extractor=None, requires_safety_checker=False).save_pretrained(tmp_path)
    pair = (diffusers.AnimateDiffPipeline.from_pretrained(tmp_path, motion_adapter=d["motion_adapter"]),
            AnimateDiffPipeline.from_pretrained(tmp_path, motion_adapter=k["motion_adapter"]))
    assert type(pair[1].unet).__name__ == "UNetMotionModel"
    for p in pair:
        p.set_progress_bar_config(disable=True)
    got, want = _run_both(pair)
    _check("sd folder + motion adapter", got, want)


def test_sdxl_folder_with_a_motion_adapter(tmp_path):
    from test_animatediff_sdxl import components, fix_oracle

    from kernel_animatediff.sdxl import AnimateDiffSDXLPipeline

    d, k = components()
    parts = {n: d[n] for n in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")}
    diffusers.StableDiffusionXLPipeline(**parts).save_pretrained(tmp_path)
    theirs = diffusers.AnimateDiffSDXLPipeline.from_pretrained(tmp_path, motion_adapter=d["motion_adapter"])
    fix_oracle(theirs.unet, d["unet"])
    pair = (theirs, AnimateDiffSDXLPipeline.from_pretrained(tmp_path, motion_adapter=k["motion_adapter"]))
    for p in pair:
        p.set_progress_bar_config(disable=True)
    got, want = _run_both(pair)
    _check("sdxl folder + motion adapter", got, want)


# ------------------------------------------------------------------------------------------ FreeNoise with the rest
def test_free_noise_and_free_init_together(t2v):
    for pipe in t2v:
        pipe.enable_free_noise(context_length=4, context_stride=2)
        pipe.enable_free_init(num_iters=2, use_fast_sampling=True)
    try:
        got, want = _run_both(t2v, num_frames=10, num_inference_steps=3)
    finally:
        for pipe in t2v:
            pipe.disable_free_noise()
            pipe.disable_free_init()
    _check("free-noise + free-init", got, want)


def test_video_to_video_free_noise_with_euler_frame_prompts_and_latents(v2v):
    pair = _swap(v2v, "AnimateDiffVideoToVideoPipeline", "EulerDiscreteScheduler")
    args = dict(V2V, prompt={0: "a cat", 4: "a dog"}, strength=0.7)
    latents = torch.randn(1, 4, 10, 8, 8, generator=fx.gen(3))

    def run():
        return (_run_both(pair, base=args, video=fx.video(frames=10)),
                _run_both(pair, base=args, video=None, latents=latents))

    (got, want), (got_l, want_l) = _free_noise(pair, dict(context_length=4, context_stride=3), run)
    _check("v2v free-noise euler frame prompts", got, want)
    _check("v2v free-noise euler latents", got_l, want_l)


def test_folders_with_a_motion_unet_and_no_adapter_both_ways(tmp_path):
    """A pipeline given a ready UNetMotionModel (motion_adapter=None) saves [null, null] for the adapter; such
    folders load both ways."""
    from kernel_animatediff import AnimateDiffPipeline, UNetMotionModel

    d, k = fx.components()
    theirs = diffusers.AnimateDiffPipeline(**{**d, "motion_adapter": None,
                                              "unet": diffusers.UNetMotionModel.from_unet2d(d["unet"], d["motion_adapter"])})
    ours = AnimateDiffPipeline(**{**k, "motion_adapter": None, "unet": UNetMotionModel.from_unet2d(k["unet"], k["motion_adapter"])})
    theirs.set_progress_bar_config(disable=True)
    want = theirs(**BASE, generator=fx.gen(0)).frames
    theirs.save_pretrained(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "theirs")
    assert type(loaded) is AnimateDiffPipeline and loaded.motion_adapter is None
    back = diffusers.AnimateDiffPipeline.from_pretrained(tmp_path / "ours")
    for pipe, name in ((loaded, "no-adapter diffusers folder here"), (back, "no-adapter our folder in diffusers")):
        pipe.set_progress_bar_config(disable=True)
        _check(name, pipe(**BASE, generator=fx.gen(0)).frames, want)
