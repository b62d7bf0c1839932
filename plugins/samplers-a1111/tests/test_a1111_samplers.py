"""The four samplers Diffusers lacks, checked on Gaussian data whose exact denoiser is known.

For ``x0 ~ N(mu, s^2)`` the ideal denoiser is ``D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2)``
and the probability-flow ODE is solved exactly by ``x(sigma) = mu + (x_T - mu) sqrt(s^2 + sigma^2) /
sqrt(s^2 + sigma_T^2)``.  The model below returns the matching epsilon (or v) prediction.
"""

from __future__ import annotations

import math

import pytest
import torch

from kernel_samplers_a1111 import (
    DPMAdaptiveScheduler,
    DPMFastScheduler,
    DPMPP2SAncestralScheduler,
    DPMPP3MSDEScheduler,
)
from kernel_samplers_a1111.dpm_solver import fast_orders

MU, S = 0.7, 0.5
ALL = [DPMPP2SAncestralScheduler, DPMPP3MSDEScheduler, DPMFastScheduler, DPMAdaptiveScheduler]


def _gaussian_model(sched, i, x_in, kind="epsilon"):
    sigma = float(sched.sigmas[i])
    x = x_in * math.sqrt(sigma**2 + 1)  # undo scale_model_input
    denoised = (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)
    if kind == "v_prediction":
        return (x / (sigma**2 + 1) - denoised) * math.sqrt(sigma**2 + 1) / sigma
    return (x - denoised) / sigma


def _sample(sched, n, *, count=2000, seed=0, kind="epsilon", dtype=torch.float64):
    sched.set_timesteps(n)
    x_T = torch.randn(count, generator=torch.Generator().manual_seed(seed), dtype=dtype) * sched.init_noise_sigma
    x = x_T.clone()
    gen = torch.Generator().manual_seed(seed + 1)
    for i, t in enumerate(sched.timesteps):
        out = _gaussian_model(sched, i, sched.scale_model_input(x, t), kind)
        x = sched.step(out, t, x, generator=gen).prev_sample
    return x, x_T


def _exact(sched, x_T):
    """The n -> infinity limit: the exact ODE to the last model sigma, then (if the schedule ends at 0) D there."""
    end = float(sched.sigmas[-1])
    last = end if end > 0 else float(sched.sigmas[-2])
    top = float(sched.init_noise_sigma)
    x = MU + (x_T - MU) * math.sqrt(S**2 + last**2) / math.sqrt(S**2 + top**2)
    return x if end > 0 else (S**2 * x + last**2 * MU) / (S**2 + last**2)


def _errors(make, steps):
    errs = []
    for n in steps:
        sched = make()
        x, x_T = _sample(sched, n)
        errs.append(float((x - _exact(sched, x_T)).abs().max()))
    return errs


# ---------------------------------------------------------------------------- convergence order
def test_dpmpp_2s_is_second_order():
    errs = _errors(lambda: DPMPP2SAncestralScheduler(eta=0.0, use_exponential_sigmas=True), [12, 24, 48])
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(r > 3.3 for r in ratios), (errs, ratios)  # ~4x per halving of h: order 2


def test_dpmpp_3m_converges_at_least_second_order():
    # Third-order updates, started with a first- and a second-order step: globally >= 2nd order.
    errs = _errors(lambda: DPMPP3MSDEScheduler(eta=0.0, use_exponential_sigmas=True), [12, 24, 48, 96])
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(r > 3.8 for r in ratios), (errs, ratios)
    assert ratios[0] > 6, (errs, ratios)  # the third-order terms dominate at coarse steps
    karras = _errors(lambda: DPMPP3MSDEScheduler(eta=0.0, use_karras_sigmas=True), [24, 48])
    assert karras[1] < karras[0] / 3


def test_dpm_fast_converges():
    errs = _errors(DPMFastScheduler, [6, 12, 24, 48])
    assert errs[0] > 5 * errs[1] > 5 * 5 * errs[2]  # third-order steps: fast decay while they dominate
    assert errs[3] < errs[2] < 1e-3


def test_dpm_fast_orders_and_budget():
    for n in range(1, 40):
        orders = fast_orders(n)
        assert sum(orders) == n and all(o in (1, 2, 3) for o in orders)
        sched = DPMFastScheduler()
        sched.set_timesteps(n)
        assert len(sched.timesteps) == n
    assert fast_orders(9) == [3, 3, 2, 1] and fast_orders(10) == [3, 3, 3, 1] and fast_orders(5) == [3, 2]


def test_dpm_adaptive_error_falls_with_budget():
    errs = _errors(DPMAdaptiveScheduler, [9, 18, 36, 72])
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-3


def test_dpm_adaptive_budget_and_tolerance_modes():
    sched = DPMAdaptiveScheduler()
    for n in (3, 5, 10, 20, 50):
        sched.set_timesteps(n)
        assert len(sched.timesteps) <= n and len(sched.timesteps) % 3 == 0
    sched.set_timesteps(50)
    assert len(sched.timesteps) >= 36  # bisection uses most of the budget
    sched.set_timesteps(None)
    loose = len(sched.timesteps)
    tight = DPMAdaptiveScheduler(rtol=0.0005, atol=0.000078)
    tight.set_timesteps(None)
    assert len(tight.timesteps) > loose >= 3
    x, x_T = _sample(tight, None)
    tight_err = float((x - _exact(tight, x_T)).abs().max())
    x, x_T = _sample(DPMAdaptiveScheduler(), None)
    loose_err = float((x - _exact(sched, x_T)).abs().max())
    assert tight_err < loose_err / 3 and tight_err < 1e-2, (tight_err, loose_err)


# ---------------------------------------------------------------------------- sampling statistics
@pytest.mark.parametrize(
    "make,n",
    [
        (lambda: DPMPP2SAncestralScheduler(), 50),
        (lambda: DPMPP2SAncestralScheduler(use_karras_sigmas=True), 30),
        (lambda: DPMPP3MSDEScheduler(use_karras_sigmas=True), 40),
        (lambda: DPMPP3MSDEScheduler(eta=0.0), 40),
        (lambda: DPMFastScheduler(), 20),
        (lambda: DPMFastScheduler(eta=1.0), 30),
        (lambda: DPMAdaptiveScheduler(), 30),
        (lambda: DPMAdaptiveScheduler(eta=1.0), 30),
    ],
)
def test_samples_match_data_distribution(make, n):
    x, _ = _sample(make(), n, count=20000)
    # Starting from N(0, sigma_max^2) instead of the exact marginal biases the mean by ~mu*s/sigma_max (0.024).
    assert abs(float(x.mean()) - MU) < 0.05
    assert abs(float(x.std()) - S) < 0.03


# ---------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("cls", ALL)
def test_v_prediction_gives_the_same_path(cls):
    a, _ = _sample(cls(), 12, count=64)
    b, _ = _sample(cls(prediction_type="v_prediction"), 12, count=64, kind="v_prediction")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # sigmas reach the model as float32


@pytest.mark.parametrize("cls", ALL)
def test_seeded_runs_repeat_and_float32_works(cls):
    a, _ = _sample(cls(eta=1.0), 8, count=32, dtype=torch.float32)
    b, _ = _sample(cls(eta=1.0), 8, count=32, dtype=torch.float32)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    c, _ = _sample(cls(eta=1.0), 8, count=32, seed=5, dtype=torch.float32)
    assert not torch.equal(a, c)


def test_evaluation_layout():
    s = DPMPP2SAncestralScheduler()
    s.set_timesteps(10)
    assert len(s.timesteps) == 19 and s.order == 2
    s = DPMPP2SAncestralScheduler(eta=0.0)
    s.set_timesteps(10)
    assert len(s.timesteps) == 19
    s = DPMPP3MSDEScheduler()
    s.set_timesteps(10)
    assert len(s.timesteps) == 10
    assert float(s.init_noise_sigma) == pytest.approx(14.6146, rel=1e-4)
    assert torch.all(s.timesteps[:-1] >= s.timesteps[1:])


@pytest.mark.parametrize("cls", ALL)
def test_add_noise_and_config_round_trip(cls, tmp_path):
    sched = cls()
    sched.set_timesteps(9)
    x0, noise = torch.randn(2, 4), torch.randn(2, 4)
    t = sched.timesteps[:1].repeat(2)
    torch.testing.assert_close(sched.add_noise(x0, noise, t), x0 + noise * float(sched.sigmas[0]))
    sched.save_config(tmp_path)
    again = cls.from_pretrained(tmp_path)
    assert dict(again.config) == dict(sched.config)
    swapped = cls.from_config({"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001,
                               "beta_end": 0.02, "_class_name": "EulerDiscreteScheduler"})
    assert swapped.config.beta_schedule == "linear"


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("cls", ALL)
def test_bad_input(cls):
    with pytest.raises(ValueError, match="prediction_type.*epsilon, v_prediction, sample"):
        cls(prediction_type="flow")
    with pytest.raises(ValueError, match="eta"):
        cls(eta=-1.0)
    with pytest.raises(ValueError, match="beta_schedule"):
        cls(beta_schedule="cosine")
    sched = cls()
    x = torch.randn(4)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.step(x, torch.tensor(999.0), x)
    with pytest.raises(ValueError, match="at least 1|>= 3"):
        sched.set_timesteps(0)
    with pytest.raises(TypeError):
        sched.set_timesteps(2.5)
    sched.set_timesteps(6)
    with pytest.raises(ValueError, match="integer timestep"):
        sched.step(x, 3, x)
    for t in sched.timesteps:
        x = sched.step(x * 0.1, t, x).prev_sample
    with pytest.raises(ValueError, match="set_timesteps again"):
        sched.step(x, sched.timesteps[-1], x)


def test_option_conflicts():
    with pytest.raises(ValueError, match="only one of"):
        DPMPP2SAncestralScheduler(use_karras_sigmas=True, use_exponential_sigmas=True)
    with pytest.raises(ValueError, match="rtol"):
        DPMAdaptiveScheduler(rtol=0.0)
    with pytest.raises(ValueError, match=">= 3"):
        DPMAdaptiveScheduler().set_timesteps(2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", ALL)
def test_no_host_device_sync_in_step(cls):
    sched = cls(eta=1.0)
    sched.set_timesteps(9, device="cuda")
    sched.set_begin_index(0)
    x = torch.randn(2, 4, 8, 8, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in sched.timesteps:
            x = sched.step(0.1 * sched.scale_model_input(x, t), t, x).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("cls", [DPMFastScheduler, DPMAdaptiveScheduler, DPMPP2SAncestralScheduler])
def test_begin_index_only_at_the_start_of_a_planned_step(cls):
    s = cls()
    s.set_timesteps(7)
    starts = [k for k in range(len(s.timesteps)) if s._starts_a_step(k)]
    inside = [k for k in range(len(s.timesteps)) if k not in starts]
    assert starts[0] == 0 and inside, "these samplers plan multi-stage steps"
    with pytest.raises(ValueError, match=f"begin_index={inside[0]} falls inside a multi-stage step"):
        s.set_begin_index(inside[0])
    k = starts[len(starts) // 2]
    s.set_begin_index(k)
    x = torch.randn(1, 2, 4, 4) * float(s.sigmas[k])
    for t in s.timesteps[k:]:
        x = s.step(0.1 * s.scale_model_input(x, t), t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert s.step_index == len(s.timesteps) and bool(torch.isfinite(x).all())
