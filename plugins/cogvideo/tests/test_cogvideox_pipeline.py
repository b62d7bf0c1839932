"""CogVideoXPipeline against Diffusers' on the same tiny random components (1e-3), folders both ways, errors."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import cog_fixtures as fx  # noqa: E402
from cog_fixtures import single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")

import kernel  # noqa: E402
from kernel_cogvideo import CogVideoXDDIMScheduler, CogVideoXPipeline  # noqa: E402
from kernel_cogvideo.pipelines import dynamic_guidance_scale  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
ATOL = 1e-3


@functools.lru_cache(maxsize=None)
def _pipes(variant: str = "sincos"):
    extra = {"sincos": {}, "rotary": {"use_rotary_positional_embeddings": True},
             "patch_t": {"use_rotary_positional_embeddings": True, "patch_size_t": 2}}[variant]
    ours, ref = fx.pipeline_parts(**extra)
    pipe, ref_pipe = CogVideoXPipeline(**ours), diffusers.CogVideoXPipeline(**ref)
    pipe.set_progress_bar_config(disable=True)
    ref_pipe.set_progress_bar_config(disable=True)
    return pipe, ref_pipe


def _args(**kw):
    return {"prompt": "a cat", "height": fx.SIZE, "width": fx.SIZE, "num_frames": 9, "num_inference_steps": 2,
            "max_sequence_length": 16, "output_type": "pt", **kw}


def _both(variant="sincos", seed=0, **kw):
    pipe, ref = _pipes(variant)
    args = _args(**kw)
    gen = (lambda: [torch.Generator().manual_seed(seed + i) for i in range(len(args["prompt"]))]) \
        if isinstance(args.get("prompt"), list) else (lambda: torch.Generator().manual_seed(seed))
    expected = ref(**args, generator=gen()).frames
    got = pipe(**args, generator=gen()).frames
    return got, expected


@pytest.mark.parametrize("variant", ["sincos", "rotary", "patch_t"])
def test_matches_diffusers(variant):
    got, expected = _both(variant)
    assert got.shape == expected.shape == (1, 9, 3, fx.SIZE, fx.SIZE)
    assert expected.std() > 1e-3
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kw", [
    {"negative_prompt": "the dog"},
    {"guidance_scale": 1.0},
    {"use_dynamic_cfg": True, "guidance_scale": 8.0},
    {"prompt": ["a cat", "the dog"], "negative_prompt": ["a photo", "dog"]},
    {"num_frames": 17, "output_type": "latent"},
], ids=["negative", "no-cfg", "dynamic-cfg", "batch", "latent"])
def test_options_match_diffusers(kw):
    got, expected = _both("rotary", **kw)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_given_latents_and_embeds_match_diffusers():
    pipe, ref = _pipes("rotary")
    latents = torch.randn(1, 3, 4, 2, 2, generator=torch.Generator().manual_seed(5))
    embeds, neg = pipe.encode_prompt("a cat", "dog", max_sequence_length=16)
    ref_embeds, ref_neg = ref.encode_prompt("a cat", "dog", max_sequence_length=16)
    torch.testing.assert_close(embeds, ref_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(neg, ref_neg, atol=1e-6, rtol=0)
    args = _args(prompt=None, prompt_embeds=embeds, negative_prompt_embeds=neg, latents=latents, output_type="np")
    got, expected = pipe(**args).frames, ref(**args).frames
    assert isinstance(got, np.ndarray) and got.shape == (1, 9, fx.SIZE, fx.SIZE, 3)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_dynamic_cfg_changes_the_result_and_scale():
    pipe, _ = _pipes("rotary")
    plain = pipe(**_args(guidance_scale=8.0), generator=torch.Generator().manual_seed(0)).frames
    seen = []
    dynamic = pipe(**_args(guidance_scale=8.0, use_dynamic_cfg=True), generator=torch.Generator().manual_seed(0),
                   callback_on_step_end=lambda p, i, t, kw: seen.append(p.guidance_scale) or {}).frames
    assert (plain - dynamic).abs().max() > 1e-4
    expected = [dynamic_guidance_scale(8.0, float(t), 2) for t in pipe.scheduler.timesteps]
    assert seen == pytest.approx(expected)


def test_pil_output_and_videos_per_prompt():
    pipe, _ = _pipes("rotary")
    out = pipe(**_args(output_type="pil", num_videos_per_prompt=2), generator=torch.Generator().manual_seed(0))
    assert len(out.frames) == 2 and len(out.frames[0]) == 9 and out.frames[0][0].size == (fx.SIZE, fx.SIZE)


def test_scheduler_matches_diffusers():
    ours, ref = CogVideoXDDIMScheduler(**fx.SCHEDULER), diffusers.CogVideoXDDIMScheduler(**fx.SCHEDULER)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, atol=1e-12, rtol=0)
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x = y = torch.randn(1, 2, 4, 3, 3, generator=g)
    for t in ref.timesteps:
        out = torch.randn(1, 2, 4, 3, 3, generator=g)
        x = ours.step(out, t, x, eta=1.0, return_dict=False)[0]
        y = ref.step(out, t, y, eta=1.0, return_dict=False)[0]
    torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_folders_both_ways(tmp_path):
    pipe, ref = _pipes("rotary")
    ref.save_pretrained(tmp_path / "ref")
    pipe.save_pretrained(tmp_path / "ours")
    loaded = kernel.load("cogvideox", str(tmp_path / "ref"))
    back = diffusers.CogVideoXPipeline.from_pretrained(tmp_path / "ours")
    assert isinstance(loaded, CogVideoXPipeline) and isinstance(loaded.scheduler, CogVideoXDDIMScheduler)
    args = _args()
    expected = ref(**args, generator=torch.Generator().manual_seed(0)).frames
    torch.testing.assert_close(loaded(**args, generator=torch.Generator().manual_seed(0)).frames, expected,
                               atol=ATOL, rtol=0)
    torch.testing.assert_close(back(**args, generator=torch.Generator().manual_seed(0)).frames, expected,
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("kw, match", [
    ({"height": 12}, "height must be a positive multiple of 8"),
    ({"num_frames": 0}, "num_frames must be a positive int"),
    ({"num_videos_per_prompt": 0}, "num_videos_per_prompt must be a positive int"),
    ({"max_sequence_length": 8}, "max_text_seq_length=16"),
    ({"prompt": None}, "pass prompt"),
    ({"prompt": 3}, "prompt must be a str or a list"),
    ({"negative_prompt": ["a", "b"]}, "negative_prompt has 2 entries"),
    ({"latents": torch.zeros(1, 4, 4, 2, 2)}, "latents must have shape"),
    ({"output_type": "gif"}, "output_type"),
])
def test_bad_inputs(kw, match):
    pipe, _ = _pipes("sincos")
    with pytest.raises((ValueError, TypeError), match=match):
        pipe(**_args(**kw))


def test_fused_qkv_projections_give_the_same_video():
    pipe, _ = _pipes("rotary")
    before = pipe(**_args(), generator=torch.Generator().manual_seed(0)).frames
    pipe.fuse_qkv_projections()
    try:
        assert hasattr(pipe.transformer.transformer_blocks[0].attn1, "to_qkv")
        fused = pipe(**_args(), generator=torch.Generator().manual_seed(0)).frames
    finally:
        pipe.unfuse_qkv_projections()
    assert not hasattr(pipe.transformer.transformer_blocks[0].attn1, "to_qkv")
    torch.testing.assert_close(fused, before, atol=1e-5, rtol=0)


def test_videos_per_prompt_with_given_embeds():
    pipe, _ = _pipes("rotary")
    embeds, neg = pipe.encode_prompt("a cat", "dog", max_sequence_length=16)
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    out = pipe(**_args(prompt=None, prompt_embeds=embeds, negative_prompt_embeds=neg, num_videos_per_prompt=2),
               generator=gens).frames
    alone = pipe(**_args(prompt=None, prompt_embeds=embeds, negative_prompt_embeds=neg),
                 generator=torch.Generator().manual_seed(1)).frames
    assert out.shape[0] == 2
    torch.testing.assert_close(out[1:], alone, atol=1e-5, rtol=0)


def test_negative_embeds_with_text_prompt_and_videos_per_prompt():
    pipe, _ = _pipes("rotary")
    _, neg = pipe.encode_prompt("a cat", "dog", max_sequence_length=16)
    out = pipe(**_args(negative_prompt_embeds=neg, num_videos_per_prompt=2),
               generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]).frames
    same = pipe(**_args(negative_prompt="dog"), generator=torch.Generator().manual_seed(0)).frames
    torch.testing.assert_close(out[:1], same, atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="negative_prompt must be a str or a list of str"):
        pipe(**_args(negative_prompt=[3]))
