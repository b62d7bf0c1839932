"""LMSDiscreteScheduler against the Diffusers oracle, bad input, swapping and sync-free loops."""

import inspect

import diffusers
import pytest
import torch

from kernel_contracts.testing import add_noise_parity, scheduler_parity
from kernel_sched_lms import LMSDiscreteScheduler

Ref = diffusers.LMSDiscreteScheduler
SHAPE = (1, 2, 4, 4)


def test_constructor_matches_diffusers():
    params = lambda cls: {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}  # noqa: E731
    assert params(LMSDiscreteScheduler) == params(Ref)
    assert set(LMSDiscreteScheduler._compatibles) == set(Ref._compatibles)


CASES = [
    ({}, [1, 2, 7, 10, 25, 50], {}),
    ({"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, [2, 10], {}),
    ({"prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1}, [7], {"order": 2}),
    ({"use_karras_sigmas": True, "beta_schedule": "scaled_linear"}, [1, 10, 25], {}),
    ({"use_exponential_sigmas": True}, [7], {"order": 3}),
    ({"use_beta_sigmas": True, "beta_schedule": "squaredcos_cap_v2"}, [10], {}),
]


@pytest.mark.parametrize("config,steps,step_kwargs", CASES, ids=str)
def test_parity(config, steps, step_kwargs):
    for n in steps:
        ours, theirs = LMSDiscreteScheduler(**config), Ref(**config)
        assert scheduler_parity(ours, theirs, n, shape=SHAPE, step_kwargs=step_kwargs) == n
    add_noise_parity(ours, theirs, shape=SHAPE)


def test_karras_ignores_sigma_range_kept_from_euler_config_like_diffusers():
    source = dict(use_karras_sigmas=True, sigma_min=0.3, sigma_max=5.0)
    ours = LMSDiscreteScheduler.from_config(diffusers.EulerDiscreteScheduler(**source).config)
    theirs = Ref.from_config(diffusers.EulerDiscreteScheduler(**source).config)
    scheduler_parity(ours, theirs, 10, shape=SHAPE)


@pytest.mark.parametrize(
    "config,needle",
    [
        ({"beta_schedule": "exp"}, "squaredcos_cap_v2"),
        ({"timestep_spacing": "middle"}, "trailing"),
        ({"prediction_type": "noise"}, "v_prediction"),
        ({"use_exponential_sigmas": True, "use_beta_sigmas": True}, "only one"),
    ],
)
def test_bad_config(config, needle):
    with pytest.raises(ValueError, match=needle):
        LMSDiscreteScheduler(**config)


def test_bad_set_timesteps_and_step():
    s = LMSDiscreteScheduler(num_train_timesteps=30)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        s.set_timesteps(31)
    with pytest.raises(ValueError, match="at least 1"):
        s.set_timesteps(-2)
    s.set_timesteps(5)
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="order"):
        s.step(x, s.timesteps[0], x, order=0)
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        s.step(x, 12.5, x)


def test_swap_from_ddim_config_matches_diffusers():
    source = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    ours = LMSDiscreteScheduler.from_config(diffusers.DDIMScheduler(**source).config)
    theirs = Ref.from_config(diffusers.DDIMScheduler(**source).config)
    scheduler_parity(ours, theirs, 10, shape=SHAPE)


def _loop(scheduler, device, steps=30):
    scheduler.set_timesteps(steps, device=device)
    x = torch.ones(SHAPE, device=device) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(0.1 * scheduler.scale_model_input(x, t), t, x).prev_sample
    return x


def test_loop_never_reads_device_tensors():
    assert _loop(LMSDiscreteScheduler(use_karras_sigmas=True), "meta").device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loop_has_no_sync():
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = _loop(LMSDiscreteScheduler(), "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(x.cpu(), _loop(LMSDiscreteScheduler(), "cpu"), atol=1e-4, rtol=1e-4)
