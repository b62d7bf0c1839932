"""CMStochasticIterativeScheduler: parity with Diffusers and bad input."""

from __future__ import annotations

import pytest
import torch

import diffusers
from kernel_contracts.testing import add_noise_parity, scheduler_parity
from kernel_sched_cm import CMStochasticIterativeScheduler

SHAPE = (2, 3, 4, 4)
CONFIGS = {
    "default": {},
    "noclip": {"clip_denoised": False, "s_noise": 1.01},
    "wide": {"num_train_timesteps": 151, "sigma_min": 0.01, "sigma_max": 20.0, "rho": 5.0, "sigma_data": 0.3},
}


@pytest.mark.parametrize("steps", [1, 2, 7, 10, 25])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity(name, steps):
    cfg = CONFIGS[name]
    if steps > cfg.get("num_train_timesteps", 40):
        pytest.skip("more steps than training steps")
    ours, theirs = CMStochasticIterativeScheduler(**cfg), diffusers.CMStochasticIterativeScheduler(**cfg)
    assert scheduler_parity(ours, theirs, steps, shape=SHAPE) == steps
    torch.testing.assert_close(ours.sigmas, theirs.sigmas)
    add_noise_parity(ours, theirs, shape=SHAPE)


def test_steps_40_and_150():
    scheduler_parity(CMStochasticIterativeScheduler(), diffusers.CMStochasticIterativeScheduler(), 40, shape=SHAPE)
    cfg = CONFIGS["wide"]
    scheduler_parity(CMStochasticIterativeScheduler(**cfg), diffusers.CMStochasticIterativeScheduler(**cfg), 150,
                     shape=SHAPE)


@pytest.mark.parametrize("timesteps", [[22, 0], [39, 30, 12, 3]])
def test_custom_timesteps_parity(timesteps):
    ours, theirs = CMStochasticIterativeScheduler(), diffusers.CMStochasticIterativeScheduler()
    scheduler_parity(ours, theirs, None, shape=SHAPE, set_timesteps_kwargs={"timesteps": timesteps})
    assert ours.custom_timesteps


def test_init_tables_and_scalings_match():
    ours, theirs = CMStochasticIterativeScheduler(), diffusers.CMStochasticIterativeScheduler()
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas)
    s = torch.tensor([0.5, 3.0, 80.0])
    for a, b in zip(ours.get_scalings(s), theirs.get_scalings(s)):
        torch.testing.assert_close(a, b)
    for a, b in zip(ours.get_scalings_for_boundary_condition(s), theirs.get_scalings_for_boundary_condition(s)):
        torch.testing.assert_close(a, b)


def test_bad_input():
    sched = CMStochasticIterativeScheduler()
    x = torch.randn(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.step(x, torch.tensor(1.0), x)
    with pytest.raises(ValueError, match="exactly one"):
        sched.set_timesteps()
    with pytest.raises(ValueError, match="exactly one"):
        sched.set_timesteps(2, timesteps=[10, 0])
    with pytest.raises(ValueError, match="num_train_timesteps=40"):
        sched.set_timesteps(41)
    with pytest.raises(ValueError, match="descending"):
        sched.set_timesteps(timesteps=[0, 10])
    with pytest.raises(ValueError, match="below num_train_timesteps"):
        sched.set_timesteps(timesteps=[40, 10])
    with pytest.raises(ValueError, match="sigma_min"):
        CMStochasticIterativeScheduler(sigma_min=5.0, sigma_max=1.0)
    sched.set_timesteps(2)
    with pytest.raises(ValueError, match="integer timestep"):
        sched.step(x, 0, x)
    with pytest.raises(ValueError, match="not one of the scheduler.s timesteps"):
        sched.step(x, torch.tensor(0.123), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_device_sync_in_step():
    sched = CMStochasticIterativeScheduler()
    sched.set_timesteps(4, device="cuda")
    sched.set_begin_index(0)
    x = torch.randn(SHAPE, device="cuda")
    g = torch.Generator("cuda").manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in sched.timesteps:
            x = sched.step(sched.scale_model_input(x, t), t, x, generator=g).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
