"""LCMScheduler against the Diffusers oracle (same seeded noise), bad input, swapping, sync-free loops."""

import inspect
import logging

import diffusers
import numpy as np
import pytest
import torch

from kernel_contracts.testing import add_noise_parity, fake_model_output, scheduler_parity
from kernel_sched_lcm import LCMScheduler, LCMSchedulerOutput

SHAPE = (2, 2, 4, 4)


def test_constructor_matches_diffusers():
    params = lambda cls: {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}  # noqa: E731
    assert params(LCMScheduler) == params(diffusers.LCMScheduler)
    set_params = lambda cls: list(inspect.signature(cls.set_timesteps).parameters)  # noqa: E731
    assert set_params(LCMScheduler) == set_params(diffusers.LCMScheduler)
    assert set(LCMScheduler._compatibles) == set(diffusers.LCMScheduler._compatibles)
    assert LCMScheduler.order == diffusers.LCMScheduler.order
    assert [f.name for f in LCMSchedulerOutput.__dataclass_fields__.values()] == ["prev_sample", "denoised"]


CASES = [
    ({}, [1, 2, 7, 10, 25, 50], {}),
    ({"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "beta_schedule": "linear"}, [1, 4, 10], {}),
    ({"prediction_type": "sample", "clip_sample": True, "clip_sample_range": 0.8, "set_alpha_to_one": False},
     [4, 7], {}),
    ({"thresholding": True, "sample_max_value": 1.5}, [4], {}),
    ({"original_inference_steps": 100, "timestep_scaling": 5.0, "beta_schedule": "squaredcos_cap_v2"}, [8, 25], {}),
    ({"trained_betas": np.linspace(1e-4, 0.03, 100).tolist(), "num_train_timesteps": 100,
      "original_inference_steps": 20}, [4, 20], {}),
    ({}, [4, 25], {"original_inference_steps": 25}),
    ({}, [4, 10], {"strength": 0.5}),
    ({}, [2], {"original_inference_steps": 30, "strength": 0.3}),
    ({}, [None], {"timesteps": [999, 759, 499, 259]}),
    ({}, [None], {"timesteps": [999, 759, 499, 259], "strength": 0.5}),
    ({"prediction_type": "v_prediction"}, [None], {"timesteps": [999, 600, 100]}),
]


@pytest.mark.parametrize("config,steps,set_kwargs", CASES, ids=lambda v: str(v)[:60])
def test_lcm_parity(config, steps, set_kwargs):
    for n in steps:
        ours, theirs = LCMScheduler(**config), diffusers.LCMScheduler(**config)
        assert scheduler_parity(ours, theirs, n, shape=SHAPE, set_timesteps_kwargs=set_kwargs) == len(theirs.timesteps)
        assert ours.num_inference_steps == theirs.num_inference_steps
    add_noise_parity(ours, theirs, shape=SHAPE)
    x, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([5, ours.config.num_train_timesteps - 1])
    torch.testing.assert_close(ours.get_velocity(x, noise, t), theirs.get_velocity(x, noise, t))


@pytest.mark.parametrize("config", [{}, {"prediction_type": "v_prediction", "clip_sample": True}], ids=str)
def test_denoised_and_tuple_output_match_diffusers(config):
    ours, theirs = LCMScheduler(**config), diffusers.LCMScheduler(**config)
    for s in (ours, theirs):
        s.set_timesteps(4)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    a, b = x.clone(), x.clone()
    ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for i, t in enumerate(theirs.timesteps):
        out = fake_model_output(a, t, i)
        a, da = ours.step(out, t, a, generator=ga, return_dict=False)
        b, db = theirs.step(out, t, b, generator=gb, return_dict=False)
        torch.testing.assert_close(da, db, atol=1e-5, rtol=0)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(a, da)  # the last step returns the denoised estimate itself


def test_begin_index_and_previous_timestep_match_diffusers():
    ours, theirs = LCMScheduler(), diffusers.LCMScheduler()
    for s in (ours, theirs):
        s.set_timesteps(6)
        s.set_begin_index(2)
    x = torch.randn(SHAPE)
    t = theirs.timesteps[2]
    a = ours.step(0.1 * x, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    b = theirs.step(0.1 * x, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    torch.testing.assert_close(a, b)
    assert ours.step_index == theirs.step_index == 3 and ours.begin_index == 2
    for t in theirs.timesteps:
        assert ours.previous_timestep(t) == int(theirs.previous_timestep(t))
    for cls in (LCMScheduler, diffusers.LCMScheduler):
        assert int(cls().previous_timestep(500)) == 499


def test_scalings_match_diffusers():
    ours, theirs = LCMScheduler(timestep_scaling=7.0), diffusers.LCMScheduler(timestep_scaling=7.0)
    for t in (0, 1, 259, torch.tensor(999)):
        for mine, ref in zip(ours.get_scalings_for_boundary_condition_discrete(t),
                             theirs.get_scalings_for_boundary_condition_discrete(t)):
            assert abs(float(mine) - float(ref)) < 1e-7


def test_custom_timestep_warnings(caplog):
    s = LCMScheduler()
    with caplog.at_level(logging.WARNING, logger="kernel_sched_lcm.consistency"):
        s.set_timesteps(timesteps=[900, 600, 100])
    text = caplog.text
    assert "num_train_timesteps - 1" in text and "[600, 100]" in text
    assert s.timesteps.tolist() == [900, 600, 100] and s.custom_timesteps


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "config,needle",
    [
        ({"beta_schedule": "sigmoid"}, "squaredcos_cap_v2"),
        ({"timestep_spacing": "middle"}, "trailing"),
        ({"prediction_type": "flow"}, "v_prediction"),
    ],
)
def test_bad_config_names_accepted_values(config, needle):
    with pytest.raises(ValueError, match=needle):
        LCMScheduler(**config)


@pytest.mark.parametrize(
    "kwargs,error,needle",
    [
        ({}, ValueError, "exactly one"),
        ({"num_inference_steps": 4, "timesteps": [999, 499]}, ValueError, "exactly one"),
        ({"num_inference_steps": 0}, ValueError, "at least 1"),
        ({"num_inference_steps": 2.5}, TypeError, "num_inference_steps"),
        ({"num_inference_steps": 1001}, ValueError, "num_train_timesteps"),
        ({"num_inference_steps": 51}, ValueError, "original_inference_steps"),
        ({"num_inference_steps": 4, "original_inference_steps": 2000}, ValueError, "num_train_timesteps=1000"),
        ({"num_inference_steps": 4, "original_inference_steps": 3.5}, TypeError, "original_inference_steps"),
        ({"num_inference_steps": 30, "strength": 0.5}, ValueError, "raise strength"),
        ({"num_inference_steps": 4, "strength": 0}, ValueError, "strength"),
        ({"num_inference_steps": 4, "strength": 1.5}, ValueError, r"\(0, 1\]"),
        ({"timesteps": [499, 999]}, ValueError, "descending"),
        ({"timesteps": [1000, 499]}, ValueError, "below num_train_timesteps"),
        ({"timesteps": [999, 499, -1]}, ValueError, "non-negative"),
        ({"timesteps": [999, 499.5]}, ValueError, "integers"),
        ({"timesteps": []}, ValueError, "non-empty"),
        ({"timesteps": [999, 499], "strength": 0.1}, ValueError, "keeps none"),
    ],
)
def test_bad_set_timesteps(kwargs, error, needle):
    with pytest.raises(error, match=needle):
        LCMScheduler().set_timesteps(**kwargs)


def test_step_before_set_timesteps_and_off_schedule_timestep():
    s = LCMScheduler()
    x = torch.randn(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, 999, x)
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        s.step(x, 123, x)


# ---------------------------------------------------------------------------- swapping
def test_from_config_swap_matches_diffusers():
    source = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
                  timestep_spacing="trailing", rescale_betas_zero_snr=True, clip_sample=False, set_alpha_to_one=False)
    ours = LCMScheduler.from_config(diffusers.DDIMScheduler(**source).config)
    theirs = diffusers.LCMScheduler.from_config(diffusers.DDIMScheduler(**source).config)
    for key in inspect.signature(LCMScheduler.__init__).parameters:
        if key != "self":
            assert ours.config[key] == theirs.config[key], key
    scheduler_parity(ours, theirs, 4, shape=SHAPE)
    back = diffusers.DDIMScheduler.from_config(ours.config)
    assert back.config.rescale_betas_zero_snr is True and back.config.timestep_spacing == "trailing"


# ---------------------------------------------------------------------------- no host sync
def _loop(scheduler, device, steps=6):
    scheduler.set_timesteps(steps, device=device)
    g = torch.Generator(device=device).manual_seed(0) if device != "meta" else None
    x = torch.ones(SHAPE, device=device)
    for t in scheduler.timesteps:
        x = scheduler.step(0.1 * scheduler.scale_model_input(x, t), t, x, generator=g).prev_sample
    return x


@pytest.mark.parametrize("config", [{}, {"thresholding": True}, {"clip_sample": True}], ids=str)
def test_loop_never_reads_device_tensors(config):
    # Meta tensors have no data: any .item(), comparison or host copy in the loop raises.
    x = _loop(LCMScheduler(**config), "meta")
    assert x.device.type == "meta" and x.shape == SHAPE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loop_has_no_sync():
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = _loop(LCMScheduler(), "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.shape == SHAPE and bool(torch.isfinite(x).all())
