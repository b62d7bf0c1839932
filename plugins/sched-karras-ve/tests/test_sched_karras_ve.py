"""KarrasVeScheduler: the KarrasVe pipeline's loop against Diffusers' deprecated scheduler."""

from __future__ import annotations

import pytest
import torch

from diffusers.schedulers.deprecated import KarrasVeScheduler as RefScheduler
from kernel_contracts.testing import assert_begin_index_stored
from kernel_sched_karras_ve import KarrasVeScheduler

SHAPE = (2, 3, 4, 4)
CONFIGS = {"default": {}, "tight": {"sigma_min": 0.002, "sigma_max": 80.0, "s_churn": 40, "s_min": 0.0,
                                    "s_max": 1000.0, "s_noise": 1.0}}


def _model(x, sigma):
    return torch.tanh(x) * 0.3 + 0.01 * float(sigma)


def _loop(sched, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(SHAPE, generator=g) * sched.init_noise_sigma
    sched.set_timesteps(steps)
    trace = []
    for t in sched.timesteps:
        sigma = sched.schedule[t]
        sigma_prev = sched.schedule[t - 1] if t > 0 else 0
        sample_hat, sigma_hat = sched.add_noise_to_input(sample, sigma, generator=g)
        out = (sigma_hat / 2) * _model((sample_hat + 1) / 2, sigma_hat / 2)
        res = sched.step(out, sigma_hat, sigma_prev, sample_hat)
        if sigma_prev != 0:
            out = (sigma_prev / 2) * _model((res.prev_sample + 1) / 2, sigma_prev / 2)
            res = sched.step_correct(out, sigma_hat, sigma_prev, sample_hat, res.prev_sample, res["derivative"])
        sample = res.prev_sample
        trace.append((sample, res.derivative, res.pred_original_sample))
    return trace


@pytest.mark.parametrize("steps", [2, 7, 10, 25, 50])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity(name, steps):
    ours, theirs = KarrasVeScheduler(**CONFIGS[name]), RefScheduler(**CONFIGS[name])
    a, b = _loop(ours, steps), _loop(theirs, steps)
    torch.testing.assert_close(ours.schedule, theirs.schedule)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    for i, (x, y) in enumerate(zip(a, b)):
        for u, v in zip(x, y):
            torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-6, msg=lambda m: f"step {i}: {m}")


def test_return_tuple_and_float_sigmas():
    ours, theirs = KarrasVeScheduler(), RefScheduler()
    x, out = torch.randn(SHAPE), torch.randn(SHAPE)
    for args in ((out, 3.0, 2.0, x), (out, torch.tensor(3.0), torch.tensor(2.0), x)):
        for u, v in zip(ours.step(*args, return_dict=False), theirs.step(*args, return_dict=False)):
            torch.testing.assert_close(u, v)
    d = torch.randn(SHAPE)
    for u, v in zip(ours.step_correct(out, 3.0, 2.0, x, x * 0.9, d, return_dict=False),
                    theirs.step_correct(out, 3.0, 2.0, x, x * 0.9, d, return_dict=False)):
        torch.testing.assert_close(u, v)


def test_bad_input():
    sched = KarrasVeScheduler()
    x = torch.randn(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.add_noise_to_input(x, 1.0)
    with pytest.raises(ValueError, match=">= 2"):
        sched.set_timesteps(1)
    with pytest.raises(TypeError, match="num_inference_steps"):
        sched.set_timesteps("10")
    with pytest.raises(ValueError, match="sigma_min"):
        KarrasVeScheduler(sigma_min=0.0)
    with pytest.raises(NotImplementedError):
        sched.add_noise(x, x, torch.tensor([0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_device_sync_in_step():
    sched = KarrasVeScheduler()
    sched.set_timesteps(4)  # schedule on the host
    x = torch.randn(SHAPE, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in sched.timesteps:
            sigma = float(sched.schedule[t])
            prev = float(sched.schedule[t - 1]) if t > 0 else 0.0
            x_hat, s_hat = sched.add_noise_to_input(x, sigma)
            res = sched.step(0.1 * x_hat, s_hat, prev, x_hat)
            x = res.prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_begin_index_is_recorded():
    # step takes sigma_hat / sigma_prev itself, so the begin index is only recorded for the pipeline.
    assert_begin_index_stored(KarrasVeScheduler(), 5)
