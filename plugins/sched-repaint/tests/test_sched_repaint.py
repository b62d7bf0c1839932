"""RePaintScheduler: the RePaint pipeline's loop (step and undo_step) against Diffusers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffusers
from kernel_contracts.testing import assert_begin_index_stored, fake_model_output
from kernel_sched_repaint import RePaintScheduler

SHAPE = (2, 3, 4, 4)
CONFIGS = {
    "default": {},
    "eta": {"eta": 0.7},
    "scaled": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "eta": 1.0},
    "cosine-noclip": {"beta_schedule": "squaredcos_cap_v2", "clip_sample": False, "num_train_timesteps": 250},
    "sigmoid": {"beta_schedule": "sigmoid"},
}


def _loop(ours, theirs, steps, jump_length, jump_n_sample):
    ours.set_timesteps(steps, jump_length, jump_n_sample)
    theirs.set_timesteps(steps, jump_length, jump_n_sample)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g)
    original = torch.randn(SHAPE, generator=g).clamp(-1, 1)
    mask = (torch.rand(SHAPE[0], 1, *SHAPE[2:], generator=g) > 0.5).float()
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    xa = xb = x
    t_last = theirs.timesteps[0] + 1
    for i, t in enumerate(theirs.timesteps):
        if t < t_last:
            out = fake_model_output(xb, t, i)
            a = ours.step(out, t, xa, original, mask, generator=ga)
            b = theirs.step(out, t, xb, original, mask, generator=gb)
            torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, atol=1e-5, rtol=0)
            xa, xb = a.prev_sample, b.prev_sample
        else:
            xa = ours.undo_step(xa, t_last, ga)
            xb = theirs.undo_step(xb, t_last, gb)
        torch.testing.assert_close(xa, xb, atol=1e-5, rtol=0, msg=lambda m: f"position {i} (t={int(t)}): {m}")
        t_last = t
    return len(theirs.timesteps)


@pytest.mark.parametrize("steps,jump_length,jump_n_sample", [(1, 1, 1), (2, 1, 2), (7, 3, 2), (10, 2, 3),
                                                              (25, 5, 2), (50, 10, 2)])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity(name, steps, jump_length, jump_n_sample):
    cfg = CONFIGS[name]
    assert _loop(RePaintScheduler(**cfg), diffusers.RePaintScheduler(**cfg), steps, jump_length, jump_n_sample) > 0


def test_default_jumps_schedule_matches():
    ours, theirs = RePaintScheduler(), diffusers.RePaintScheduler()
    ours.set_timesteps(250)
    theirs.set_timesteps(250)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    ours.set_timesteps(5000)  # capped at num_train_timesteps, as the reference
    theirs.set_timesteps(5000)
    assert torch.equal(ours.timesteps, theirs.timesteps)


def test_trained_betas():
    betas = np.linspace(1e-4, 0.03, 100, dtype=np.float32)
    ours, theirs = RePaintScheduler(num_train_timesteps=100, trained_betas=betas), \
        diffusers.RePaintScheduler(num_train_timesteps=100, trained_betas=betas)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod)
    _loop(ours, theirs, 10, 2, 2)


def test_bad_input():
    with pytest.raises(ValueError, match="beta_schedule.*linear, scaled_linear"):
        RePaintScheduler(beta_schedule="cosine")
    sched = RePaintScheduler()
    x = torch.randn(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.step(x, 10, x, x, torch.ones_like(x))
    with pytest.raises(ValueError, match="at least 1"):
        sched.set_timesteps(0)
    with pytest.raises(ValueError, match="jump_length"):
        sched.set_timesteps(10, jump_length=0)
    sched.set_timesteps(10)
    with pytest.raises(ValueError, match="outside"):
        sched.step(x, 1000, x, x, torch.ones_like(x))
    with pytest.raises(ValueError, match="undo_step"):
        sched.undo_step(x, 950)
    with pytest.raises(NotImplementedError, match="DDPMScheduler"):
        sched.add_noise(x, x, torch.tensor([1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_device_sync_in_step():
    sched = RePaintScheduler(eta=0.5)
    sched.set_timesteps(6, jump_length=2, jump_n_sample=2)  # CPU timesteps
    x = torch.randn(SHAPE, device="cuda")
    known, mask = torch.zeros_like(x), torch.ones_like(x)
    t_last = sched.timesteps[0] + 1
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in sched.timesteps:
            x = sched.step(0.1 * x, t, x, known, mask).prev_sample if t < t_last else sched.undo_step(x, t_last)
            t_last = t
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_begin_index_is_recorded():
    assert_begin_index_stored(RePaintScheduler(), 10, jump_length=2, jump_n_sample=2)
