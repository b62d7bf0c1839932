"""CogVideoXDPMScheduler against Diffusers' (tables, timesteps, multistep steps with seeded noise), and the three
CogVideoX pipelines with it swapped in (1e-3 against Diffusers' pipelines on the same tiny components)."""

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
from kernel_cogvideo import (  # noqa: E402
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    CogVideoXVideoToVideoPipeline,
)

pytestmark = pytest.mark.usefixtures("single_thread")
ATOL = 1e-3


def _run(scheduler, steps: int, seed: int, shape=(2, 3, 4, 3, 3)):
    """The reference pipelines' multistep loop with a fixed stand-in model; returns every step's outputs."""
    scheduler.set_timesteps(steps)
    data = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 1)
    x, old, outs = torch.randn(shape, generator=data), None, []
    ts = scheduler.timesteps
    for i, t in enumerate(ts):
        model_output = torch.randn(shape, generator=data)
        x, old = scheduler.step(model_output, old, t, ts[i - 1] if i > 0 else None, x, generator=noise,
                                return_dict=False)
        outs.append((x, old))
    return outs


@pytest.mark.parametrize("config, steps", [
    (fx.SCHEDULER, 4),
    (fx.SCHEDULER, 1),
    ({}, 5),
    ({"prediction_type": "sample", "timestep_spacing": "linspace"}, 3),
    ({"beta_schedule": "linear", "set_alpha_to_one": False, "steps_offset": 1, "snr_shift_scale": 1.0}, 6),
], ids=["cogvideox", "one-step", "defaults", "sample-linspace", "linear-offset"])
def test_scheduler_matches_diffusers(config, steps):
    ours, ref = CogVideoXDPMScheduler(**config), diffusers.CogVideoXDPMScheduler(**config)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, atol=1e-12, rtol=0)
    got, expected = _run(ours, steps, 3), _run(ref, steps, 3)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    for (x, x0), (y, y0) in zip(got, expected):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
        torch.testing.assert_close(x0, y0, atol=1e-5, rtol=0)


def test_step_is_stochastic_and_returns_an_output_on_request():
    s = CogVideoXDPMScheduler(**fx.SCHEDULER)
    s.set_timesteps(4)
    x = torch.randn(1, 2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    t = s.timesteps[1]
    a = s.step(x, None, t, None, x, generator=torch.Generator().manual_seed(1))[0]
    b = s.step(x, None, t, None, x, generator=torch.Generator().manual_seed(2))[0]
    assert (a - b).abs().max() > 1e-3
    out = s.step(x, x, t, s.timesteps[0], x, generator=torch.Generator().manual_seed(1), return_dict=True)
    assert out.prev_sample.shape == x.shape and out.pred_original_sample.shape == x.shape


def test_scheduler_errors():
    with pytest.raises(ValueError, match="prediction_type"):
        CogVideoXDPMScheduler(prediction_type="flow")
    x = torch.zeros(1, 2, 4, 2, 2)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        CogVideoXDPMScheduler().step(x, None, 999, None, x)


def test_scheduler_swap_and_registration():
    ddim = CogVideoXDDIMScheduler(**fx.SCHEDULER)
    dpm = CogVideoXDPMScheduler.from_config(ddim.config)
    assert dict(dpm.config) == dict(ddim.config)
    assert kernel.component("CogVideoXDPMScheduler") is CogVideoXDPMScheduler


def _with_dpm(ours: dict, ref: dict) -> tuple[dict, dict]:
    return ({**ours, "scheduler": CogVideoXDPMScheduler(**fx.SCHEDULER)},
            {**ref, "scheduler": diffusers.CogVideoXDPMScheduler(**fx.SCHEDULER)})


@functools.lru_cache(maxsize=None)
def _pipes(kind: str):
    if kind == "t2v":
        ours, ref = _with_dpm(*fx.pipeline_parts(use_rotary_positional_embeddings=True))
        pipe, ref_pipe = CogVideoXPipeline(**ours), diffusers.CogVideoXPipeline(**ref)
    elif kind == "i2v":
        ours, ref = _with_dpm(*fx.pipeline_parts(use_rotary_positional_embeddings=True, in_channels=8))
        pipe, ref_pipe = CogVideoXImageToVideoPipeline(**ours), diffusers.CogVideoXImageToVideoPipeline(**ref)
    else:
        ours, ref = _with_dpm(*fx.pipeline_parts(use_rotary_positional_embeddings=True))
        pipe, ref_pipe = CogVideoXVideoToVideoPipeline(**ours), diffusers.CogVideoXVideoToVideoPipeline(**ref)
    pipe.set_progress_bar_config(disable=True)
    ref_pipe.set_progress_bar_config(disable=True)
    return pipe, ref_pipe


BASE = {"prompt": "a cat", "height": fx.SIZE, "width": fx.SIZE, "num_inference_steps": 3, "max_sequence_length": 16,
        "output_type": "pt"}
EXTRA = {"t2v": {"num_frames": 9}, "i2v": {"num_frames": 9, "image": fx.video(1)[0]}, "v2v": {"video": fx.video()}}


@pytest.mark.parametrize("kind", ["t2v", "i2v", "v2v"])
@pytest.mark.parametrize("kw", [
    {},
    {"negative_prompt": "the dog", "use_dynamic_cfg": True, "num_inference_steps": 4},
    {"prompt": ["a cat", "the dog"], "guidance_scale": 1.0},
], ids=["default", "negative-dynamic-cfg", "batch-no-cfg"])
def test_pipelines_with_dpm_match_diffusers(kind, kw):
    pipe, ref = _pipes(kind)
    args = {**BASE, **EXTRA[kind], **kw}
    if kind == "v2v":
        args["strength"] = 0.7
    # a generator per video (the reference's video-to-video takes a list only with one video per prompt)
    gen = (lambda: [torch.Generator().manual_seed(i) for i in range(2)]) \
        if isinstance(args["prompt"], list) and kind != "v2v" else (lambda: torch.Generator().manual_seed(0))
    if isinstance(args["prompt"], list) and kind == "i2v":
        args["image"] = fx.video(2, seed=1)
    expected = ref(**args, generator=gen()).frames
    got = pipe(**args, generator=gen()).frames
    assert got.shape == expected.shape
    assert expected.std() > 1e-3
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_dpm_differs_from_ddim_and_carries_no_state_between_calls():
    pipe, _ = _pipes("t2v")
    args = {**BASE, **EXTRA["t2v"]}
    first = pipe(**args, generator=torch.Generator().manual_seed(0)).frames
    again = pipe(**args, generator=torch.Generator().manual_seed(0)).frames
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    ddim = CogVideoXPipeline(**{**pipe.components, "scheduler": CogVideoXDDIMScheduler(**fx.SCHEDULER)})
    ddim.set_progress_bar_config(disable=True)
    assert (ddim(**args, generator=torch.Generator().manual_seed(0)).frames - first).abs().max() > 1e-3


def test_folder_with_dpm_scheduler_loads_both_ways(tmp_path):
    pipe, ref = _pipes("t2v")
    ref.save_pretrained(tmp_path / "ref")
    pipe.save_pretrained(tmp_path / "ours")
    loaded = kernel.load("cogvideox", str(tmp_path / "ref"))
    back = diffusers.CogVideoXPipeline.from_pretrained(tmp_path / "ours")
    assert isinstance(loaded.scheduler, CogVideoXDPMScheduler)
    assert isinstance(back.scheduler, diffusers.CogVideoXDPMScheduler)
    args = {**BASE, **EXTRA["t2v"]}
    expected = ref(**args, generator=torch.Generator().manual_seed(0)).frames
    torch.testing.assert_close(loaded(**args, generator=torch.Generator().manual_seed(0)).frames, expected,
                               atol=ATOL, rtol=0)
    torch.testing.assert_close(back(**args, generator=torch.Generator().manual_seed(0)).frames, expected,
                               atol=ATOL, rtol=0)
