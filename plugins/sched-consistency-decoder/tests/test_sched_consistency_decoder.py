"""ConsistencyDecoderScheduler: the decoder's two-step loop against Diffusers."""

from __future__ import annotations

import pytest
import torch

import diffusers
from diffusers.schedulers.scheduling_consistency_decoder import ConsistencyDecoderScheduler as RefScheduler
from kernel_contracts.testing import assert_begin_index_stored, scheduler_parity
from kernel_sched_consistency_decoder import ConsistencyDecoderScheduler

SHAPE = (2, 3, 8, 8)


@pytest.mark.parametrize("cfg", [{}, {"sigma_data": 0.3}, {"num_train_timesteps": 2000}])
@pytest.mark.parametrize("seed", [0, 1])
def test_parity(cfg, seed):
    ours, theirs = ConsistencyDecoderScheduler(**cfg), RefScheduler(**cfg)
    assert scheduler_parity(ours, theirs, 2, shape=SHAPE, seed=seed) == 2
    torch.testing.assert_close(ours.init_noise_sigma, theirs.init_noise_sigma)
    for name in ("c_in", "c_out", "c_skip", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name))


def test_decoder_loop_with_positional_generator():
    """The consistency VAE passes the generator positionally: step(out, t, x, generator)."""
    ours, theirs = ConsistencyDecoderScheduler(), RefScheduler()
    ours.set_timesteps(2)
    theirs.set_timesteps(2)
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    xa = ours.init_noise_sigma * torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    xb = xa.clone()
    for t in theirs.timesteps:
        out = torch.tanh(ours.scale_model_input(xa, t))
        xa = ours.step(out, t, xa, ga).prev_sample
        xb = theirs.step(out, t, xb, gb).prev_sample
        torch.testing.assert_close(xa, xb, atol=1e-5, rtol=0)


def test_add_noise_matches_forward_process():
    sched = ConsistencyDecoderScheduler()
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([512, 1008])
    ref = diffusers.DDPMScheduler(num_train_timesteps=1024, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(sched.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), atol=1e-5, rtol=0)


def test_bad_input():
    sched = ConsistencyDecoderScheduler()
    x = torch.randn(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.step(x, 1008, x)
    for n in (1, 3, None):
        with pytest.raises(ValueError, match="num_inference_steps=2 only"):
            sched.set_timesteps(n)
    sched.set_timesteps(2)
    with pytest.raises(ValueError, match="not one of scheduler.timesteps"):
        sched.step(x, 700, x)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        ConsistencyDecoderScheduler(num_train_timesteps=1000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_device_sync_in_step():
    sched = ConsistencyDecoderScheduler()
    sched.set_timesteps(2)  # CPU timesteps
    x = torch.randn(SHAPE, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in sched.timesteps:
            x = sched.step(sched.scale_model_input(x, t), t, x).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_begin_index_is_recorded_and_steps_stay_located_by_timestep():
    assert_begin_index_stored(ConsistencyDecoderScheduler(), 2)
    plain, started = ConsistencyDecoderScheduler(), ConsistencyDecoderScheduler()
    for s in (plain, started):
        s.set_timesteps(2)
    started.set_begin_index(1)
    x, out = torch.randn(SHAPE), torch.randn(SHAPE)
    t = plain.timesteps[1]
    assert torch.equal(plain.step(out, t, x).prev_sample, started.step(out, t, x).prev_sample)
