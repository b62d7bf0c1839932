"""CogVideoXFunControlPipeline against Diffusers' on the tiny config of Diffusers' own test (1e-3), folders both
ways, the DPM scheduler, and its errors."""

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

import kernel  # noqa: E402
from kernel_cogvideo import CogVideoXDPMScheduler, CogVideoXFunControlPipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
ATOL = 1e-3
# Diffusers' tiny test transformer: 4 heads of 8, 8 input channels (latents + control latents), 2x2 patches.
TRANSFORMER = dict(num_attention_heads=4, attention_head_dim=8, in_channels=8, out_channels=4, time_embed_dim=2,
                   text_embed_dim=32, num_layers=1, sample_width=2, sample_height=2, sample_frames=9, patch_size=2,
                   temporal_compression_ratio=4, max_text_seq_length=16)


def _parts():
    import kernel_cogvideo as ours

    torch.manual_seed(0)
    ref_t = diffusers.CogVideoXTransformer3DModel(**TRANSFORMER).eval()
    ref_v = diffusers.AutoencoderKLCogVideoX(**fx.VAE).eval()
    our_t, our_v = ours.CogVideoXTransformer3DModel(**TRANSFORMER).eval(), ours.AutoencoderKLCogVideoX(**fx.VAE).eval()
    fx.transfer(ref_t, our_t)
    fx.transfer(ref_v, our_v)
    tok, enc = fx.tokenizer(), fx.text_encoder()
    return (dict(tokenizer=tok, text_encoder=enc, vae=our_v, transformer=our_t, scheduler=ours.CogVideoXDDIMScheduler()),
            dict(tokenizer=tok, text_encoder=enc, vae=ref_v, transformer=ref_t,
                 scheduler=diffusers.CogVideoXDDIMScheduler()))


@functools.lru_cache(maxsize=None)
def _pipes():
    ours, ref = _parts()
    pipe, ref_pipe = CogVideoXFunControlPipeline(**ours), diffusers.CogVideoXFunControlPipeline(**ref)
    pipe.set_progress_bar_config(disable=True)
    ref_pipe.set_progress_bar_config(disable=True)
    return pipe, ref_pipe


def _args(**kw):
    return {"prompt": "a cat", "control_video": fx.video(frames=8), "height": fx.SIZE, "width": fx.SIZE,
            "num_inference_steps": 2, "guidance_scale": 6.0, "max_sequence_length": 16, "output_type": "pt", **kw}


def _compare(**kw):
    pipe, ref = _pipes()
    args = _args(**kw)
    expected = ref(**args, generator=torch.Generator().manual_seed(0)).frames
    got = pipe(**args, generator=torch.Generator().manual_seed(0)).frames
    assert got.shape == expected.shape
    assert expected.std() > 1e-3
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    return got


@pytest.mark.parametrize("kw", [
    {},
    {"negative_prompt": "the dog"},
    {"use_dynamic_cfg": True, "guidance_scale": 8.0, "num_inference_steps": 3},
    {"guidance_scale": 1.0},
    {"control_video": fx.video(frames=9, seed=2), "output_type": "latent"},
], ids=["default", "negative", "dynamic-cfg", "no-cfg", "9-frames-latent"])
def test_matches_diffusers(kw):
    got = _compare(**kw)
    if kw.get("output_type") != "latent":
        assert got.shape == (1, 8, 3, fx.SIZE, fx.SIZE)


def test_diffusers_test_inputs_with_plain_ddim_match():
    """Diffusers' own test: plain DDIMScheduler, black control frames, an empty negative prompt."""
    from PIL import Image

    from kernel_sched_ddim import DDIMScheduler

    pipe, ref = _pipes()
    ours = CogVideoXFunControlPipeline(**{**pipe.components, "scheduler": DDIMScheduler()})
    theirs = diffusers.CogVideoXFunControlPipeline(**{**ref.components, "scheduler": diffusers.DDIMScheduler()})
    for p in (ours, theirs):
        p.set_progress_bar_config(disable=True)
    args = _args(prompt="dance monkey", negative_prompt="", control_video=[Image.new("RGB", (fx.SIZE, fx.SIZE))] * 8)
    expected = theirs(**args, generator=torch.Generator().manual_seed(0)).frames
    got = ours(**args, generator=torch.Generator().manual_seed(0)).frames
    assert got.shape == (1, 8, 3, fx.SIZE, fx.SIZE)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_one_control_video_per_prompt_matches_diffusers():
    videos = [fx.video(frames=8, seed=s) for s in (1, 2, 3)]
    got = _compare(prompt=["a cat", "the dog", "a photo"], control_video=videos)
    assert got.shape[0] == 3


def test_explicit_latents_and_embeds_match_diffusers():
    pipe, ref = _pipes()
    latents = torch.randn(1, 2, 4, 2, 2, generator=torch.Generator().manual_seed(7))
    embeds, neg = pipe.encode_prompt("a cat", "dog", max_sequence_length=16)
    args = _args(prompt=None, prompt_embeds=embeds, negative_prompt_embeds=neg, latents=latents)
    torch.testing.assert_close(pipe(**args).frames, ref(**args).frames, atol=ATOL, rtol=0)


def test_the_control_video_steers_the_result_and_its_latents_can_be_given():
    pipe, _ = _pipes()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    one = pipe(**_args(), generator=gen()).frames
    other = pipe(**_args(control_video=fx.video(frames=8, seed=5)), generator=gen()).frames
    assert (one - other).abs().max() > 1e-3
    # the reference cannot take control_video_latents (it re-encodes control_video regardless); here they are
    # the frames-first, scaled latents the pipeline would make
    pixels = pipe.video_processor.preprocess_video(fx.video(frames=8), height=fx.SIZE, width=fx.SIZE)
    z = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
    given = pipe(**_args(control_video=None, control_video_latents=z.permute(0, 2, 1, 3, 4)), generator=gen()).frames
    torch.testing.assert_close(given, one, atol=1e-5, rtol=0)


def test_batch_spreads_one_control_video():
    pipe, _ = _pipes()
    both = pipe(**_args(prompt=["a cat", "the dog"]),
                generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]).frames
    alone = pipe(**_args(prompt="the dog"), generator=torch.Generator().manual_seed(1)).frames
    assert both.shape[0] == 2
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)


def test_dpm_scheduler_runs_multistep():
    pipe, _ = _pipes()
    dpm = CogVideoXFunControlPipeline(**{**pipe.components, "scheduler": CogVideoXDPMScheduler()})
    dpm.set_progress_bar_config(disable=True)
    seen = []
    out = dpm(**_args(num_inference_steps=3), generator=torch.Generator().manual_seed(0),
              callback_on_step_end=lambda p, i, t, kw: seen.append(p._call.old_pred_original_sample is not None) or {})
    assert out.frames.shape == (1, 8, 3, fx.SIZE, fx.SIZE) and seen == [True, True, True]


def test_folders_both_ways(tmp_path):
    pipe, ref = _pipes()
    ref.save_pretrained(tmp_path / "ref")
    pipe.save_pretrained(tmp_path / "ours")
    loaded = kernel.load("cogvideox-fun-control", str(tmp_path / "ref"))
    back = diffusers.CogVideoXFunControlPipeline.from_pretrained(tmp_path / "ours")
    assert isinstance(loaded, CogVideoXFunControlPipeline)
    args = _args()
    expected = ref(**args, generator=torch.Generator().manual_seed(0)).frames
    torch.testing.assert_close(loaded(**args, generator=torch.Generator().manual_seed(0)).frames, expected,
                               atol=ATOL, rtol=0)
    torch.testing.assert_close(back(**args, generator=torch.Generator().manual_seed(0)).frames, expected,
                               atol=ATOL, rtol=0)
    with pytest.raises(ValueError):
        kernel.load("cogvideox", str(tmp_path / "ref"))


@pytest.mark.parametrize("kw, match", [
    ({"control_video": None}, "control_video is required"),
    ({"control_video": []}, "control_video is empty"),
    ({"control_video_latents": torch.zeros(1, 2, 4, 2, 2)}, "either control_video or control_video_latents"),
    ({"control_video": None, "control_video_latents": torch.zeros(1, 2, 3, 2, 2)}, "control_video_latents has shape"),
    ({"control_video": None, "control_video_latents": torch.zeros(2, 4, 2, 2)}, "control_video_latents must be"),
    ({"control_video": [fx.video(frames=8), fx.video(frames=8, seed=1)], "prompt": ["a", "b", "c"]},
     "got 2 control videos for a batch of 3"),
    ({"control_video": [fx.video(frames=8), fx.video(frames=5, seed=1)], "prompt": ["a", "b"]}, "same number"),
    ({"height": 12}, "height must be a positive multiple of 8"),
    ({"latents": torch.zeros(1, 3, 4, 2, 2)}, "latents must have shape"),
])
def test_bad_inputs(kw, match):
    pipe, _ = _pipes()
    with pytest.raises((ValueError, TypeError), match=match):
        pipe(**_args(**kw))


def test_temporal_patches_need_a_fitting_control_video():
    ours, _ = _parts()
    ours["transformer"] = kernel.component("CogVideoXTransformer3DModel")(
        **{**TRANSFORMER, "use_rotary_positional_embeddings": True, "patch_size_t": 2, "ofs_embed_dim": 8})
    pipe = CogVideoXFunControlPipeline(**ours)
    with pytest.raises(ValueError, match="patch_size_t=2"):
        pipe(**_args(control_video=fx.video(frames=9)))

