"""Score-SDE schedulers: the predictor-corrector loop (VE) and Euler-Maruyama loop (VP) vs Diffusers."""

from __future__ import annotations

import pytest
import torch

import diffusers
from diffusers.schedulers.deprecated import ScoreSdeVpScheduler as RefVp
from kernel_contracts.testing import assert_begin_index_stored
from kernel_sched_score_sde import ScoreSdeVeScheduler, ScoreSdeVpScheduler

SHAPE = (2, 3, 4, 4)


def _score(x, sigma):
    return -x / (sigma**2 + 1.0)


def _ve_loop(sched, steps, seed, tensor_timestep):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(SHAPE, generator=g) * sched.init_noise_sigma
    sched.set_timesteps(steps)
    sched.set_sigmas(steps)
    trace = []
    for i, t in enumerate(sched.timesteps):
        sigma_t = sched.sigmas[i] * torch.ones(SHAPE[0])
        for _ in range(sched.config.correct_steps):
            out = _score(sample, sigma_t[0])
            sample = sched.step_correct(out, sample, generator=g).prev_sample
            trace.append(sample)
        out = _score(sample, sigma_t[0])
        res = sched.step_pred(out, t if tensor_timestep else float(t), sample, generator=g)
        sample = res.prev_sample
        trace += [res.prev_sample, res.prev_sample_mean]
    return trace


VE_CONFIGS = {"default": {}, "small": {"sigma_max": 50.0, "sigma_min": 0.02, "snr": 0.1, "correct_steps": 2,
                                       "sampling_eps": 1e-3}}


@pytest.mark.parametrize("steps", [1, 2, 7, 10, 25, 50])
@pytest.mark.parametrize("name", sorted(VE_CONFIGS))
def test_ve_parity(name, steps):
    cfg = VE_CONFIGS[name]
    ours, theirs = ScoreSdeVeScheduler(**cfg), diffusers.ScoreSdeVeScheduler(**cfg)
    a = _ve_loop(ours, steps, 0, tensor_timestep=steps % 2 == 0)
    b = _ve_loop(theirs, steps, 0, tensor_timestep=True)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas)
    torch.testing.assert_close(ours.discrete_sigmas, theirs.discrete_sigmas)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    for i, (x, y) in enumerate(zip(a, b)):
        scale = max(1.0, float(y.abs().max()))
        torch.testing.assert_close(x, y, atol=1e-5 * scale, rtol=0, msg=lambda m: f"position {i}: {m}")


def test_ve_batched_timestep_and_add_noise():
    ours, theirs = ScoreSdeVeScheduler(), diffusers.ScoreSdeVeScheduler()
    for s in (ours, theirs):
        s.set_timesteps(10)
        s.set_sigmas(10)
    x, out = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([0.5, 0.0])
    a = ours.step_pred(out, t, x, generator=torch.Generator().manual_seed(0))
    b = theirs.step_pred(out, t, x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.prev_sample, b.prev_sample)
    torch.testing.assert_close(a.prev_sample_mean, b.prev_sample_mean)
    idx = torch.tensor([0, 9])
    torch.testing.assert_close(ours.add_noise(x, out, idx), theirs.add_noise(x, out, idx))
    ours_init = ScoreSdeVeScheduler()
    assert len(ours_init.timesteps) == 2000 and len(ours_init.discrete_sigmas) == 2000


VP_CONFIGS = {"default": {}, "other": {"beta_min": 0.05, "beta_max": 10.0, "sampling_eps": 1e-2}}


@pytest.mark.parametrize("steps", [1, 2, 7, 10, 25, 50])
@pytest.mark.parametrize("name", sorted(VP_CONFIGS))
def test_vp_parity(name, steps):
    cfg = VP_CONFIGS[name]
    ours, theirs = ScoreSdeVpScheduler(**cfg), RefVp(**cfg)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    g = torch.Generator().manual_seed(0)
    xa = xb = torch.randn(SHAPE, generator=g)
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for i, t in enumerate(theirs.timesteps):
        tb = t * torch.ones(SHAPE[0])
        eps = torch.tanh(xb) * 0.5
        xa, ma = ours.step_pred(eps, xa, tb, generator=ga)
        xb, mb = theirs.step_pred(eps, xb, tb, generator=gb)
        torch.testing.assert_close(xa, xb, atol=1e-5, rtol=0, msg=lambda m: f"step {i}: {m}")
        torch.testing.assert_close(ma, mb, atol=1e-5, rtol=0)


def test_vp_add_noise_is_the_sde_marginal():
    sched = ScoreSdeVpScheduler()
    x0 = torch.full(SHAPE, 2.0)
    noise = torch.randn(SHAPE)
    t = torch.tensor([1e-3, 1.0])
    out = sched.add_noise(x0, noise, t)
    # near t=0 the sample is almost clean; at t=1 almost pure noise (alpha = exp(-5.025) ~ 0.0066)
    assert (out[0] - x0[0]).abs().max() < 0.05
    torch.testing.assert_close(out[1], 0.0065766 * 2.0 + (1 - 0.0065766**2) ** 0.5 * noise[1], atol=1e-4, rtol=0)


def test_bad_input():
    with pytest.raises(ValueError, match="sigma_min"):
        ScoreSdeVeScheduler(sigma_min=10.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="sampling_eps"):
        ScoreSdeVpScheduler(sampling_eps=0.0)
    vp = ScoreSdeVpScheduler()
    x = torch.randn(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        vp.step_pred(x, x, torch.ones(2))
    ve = ScoreSdeVeScheduler()
    with pytest.raises(ValueError, match="at least 1"):
        ve.set_timesteps(0)
    with pytest.raises(ValueError, match="outside the noise ladder"):
        ve.step_pred(x, 3.0, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_device_sync_in_step():
    ve = ScoreSdeVeScheduler()
    ve.set_timesteps(5)
    ve.set_sigmas(5)
    vp = ScoreSdeVpScheduler()
    vp.set_timesteps(5, device="cuda")
    x = torch.randn(SHAPE, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in ve.timesteps:  # host timesteps: scalar path
            x = ve.step_correct(-x, x).prev_sample
            x = ve.step_pred(-x, t, x).prev_sample
        for t in vp.timesteps:
            x, _ = vp.step_pred(0.1 * x, x, t * torch.ones(2, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("cls", [ScoreSdeVeScheduler, ScoreSdeVpScheduler])
def test_begin_index_is_recorded_and_known_contract_failures_are_declared(cls):
    assert_begin_index_stored(cls(), 10)
    assert cls.component_kind == "scheduler"
    # No step(): the generic loop's contracts are declared as known failures next to the class.
    assert not hasattr(cls, "step") and "step_shape_dtype" in cls._known_contract_failures
