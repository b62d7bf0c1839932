"""UnCLIPScheduler: every step against Diffusers (the unCLIP loop passes prev_timestep)."""

from __future__ import annotations

import pytest
import torch

import diffusers
from kernel_contracts.testing import add_noise_parity, assert_begin_index_stored, fake_model_output
from kernel_sched_unclip import UnCLIPScheduler

SHAPE = (2, 3, 4, 4)
CONFIGS = {
    "default": {},
    "learned": {"variance_type": "learned_range"},
    "sample-pred": {"prediction_type": "sample", "clip_sample_range": 2.0},
    "noclip": {"clip_sample": False, "num_train_timesteps": 500},
}


def _loop(ours, theirs, steps, learned=False, use_prev=True, seed=0):
    if steps is not None:
        ours.set_timesteps(steps)
        theirs.set_timesteps(steps)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    ts = theirs.timesteps
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g)
    ga, gb = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    for i, t in enumerate(ts):
        out = fake_model_output(x, t, i)
        if learned:
            out = torch.cat([out, torch.tanh(out)], dim=1)
        prev = ts[i + 1] if use_prev and i + 1 < len(ts) else None
        a = ours.step(out, t, x, prev_timestep=prev, generator=ga)
        b = theirs.step(out, t, x, prev_timestep=prev, generator=gb)
        torch.testing.assert_close(a.prev_sample, b.prev_sample, atol=1e-5, rtol=0, msg=lambda m: f"step {i}: {m}")
        torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, atol=1e-5, rtol=0)
        x = b.prev_sample
    return len(ts)


@pytest.mark.parametrize("steps", [2, 7, 10, 25, 50])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity(name, steps):
    cfg = CONFIGS[name]
    ours, theirs = UnCLIPScheduler(**cfg), diffusers.UnCLIPScheduler(**cfg)
    assert _loop(ours, theirs, steps, learned=name == "learned") == steps
    add_noise_parity(ours, theirs, shape=SHAPE)


@pytest.mark.parametrize("learned", [False, True])
def test_parity_single_steps_default_schedule(learned):
    cfg = {"variance_type": "learned_range"} if learned else {}
    ours, theirs = UnCLIPScheduler(**cfg), diffusers.UnCLIPScheduler(**cfg)
    ours.timesteps = ours.timesteps[-12:]
    theirs.timesteps = theirs.timesteps[-12:]
    _loop(ours, theirs, None, learned=learned, use_prev=False)


def test_bad_input():
    with pytest.raises(ValueError, match="variance_type.*fixed_small_log, learned_range"):
        UnCLIPScheduler(variance_type="fixed_large")
    with pytest.raises(ValueError, match="prediction_type.*epsilon, sample"):
        UnCLIPScheduler(prediction_type="v_prediction")
    with pytest.raises(ValueError, match="beta_schedule"):
        UnCLIPScheduler(beta_schedule="linear")
    sched = UnCLIPScheduler()
    with pytest.raises(ValueError, match="num_inference_steps >= 2"):
        sched.set_timesteps(1)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        sched.set_timesteps(1001)
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="outside"):
        sched.step(x, 1000, x)
    with pytest.raises(ValueError, match="prev_timestep"):
        sched.step(x, 10, x, prev_timestep=20)
    learned = UnCLIPScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match="predicted variance"):
        learned.step(x, 10, x)


def test_last_step_draws_no_noise():
    """At t=0 no noise is drawn, so a shared generator stays in step with the reference pipeline."""
    sched = UnCLIPScheduler()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE)
    sched.step(x, 0, x, generator=g)
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=torch.Generator().manual_seed(0)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_device_sync_in_step():
    sched = UnCLIPScheduler()
    sched.set_timesteps(4)  # CPU timesteps: control flow is decided on the host
    x = torch.randn(SHAPE, device="cuda")
    ts = sched.timesteps
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, t in enumerate(ts):
            prev = ts[i + 1] if i + 1 < len(ts) else None
            x = sched.step(0.1 * x, t, x, prev_timestep=prev).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_begin_index_is_recorded_and_steps_take_their_timesteps():
    assert_begin_index_stored(UnCLIPScheduler(), 6)
    plain, started = UnCLIPScheduler(), UnCLIPScheduler()
    for s in (plain, started):
        s.set_timesteps(6)
    started.set_begin_index(3)
    x, out = torch.randn(SHAPE), torch.randn(SHAPE)
    t, prev = plain.timesteps[3], plain.timesteps[4]
    a = plain.step(out, t, x, prev_timestep=prev, generator=torch.Generator().manual_seed(0)).prev_sample
    b = started.step(out, t, x, prev_timestep=prev, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.equal(a, b)
