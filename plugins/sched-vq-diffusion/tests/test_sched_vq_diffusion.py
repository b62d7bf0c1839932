"""VQDiffusionScheduler: every reverse step (posterior log-probs and drawn tokens) vs Diffusers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffusers
from diffusers.schedulers import scheduling_vq_diffusion as ref_module
from kernel_contracts.testing import assert_begin_index_stored
from kernel_sched_vq_diffusion import (
    VQDiffusionScheduler,
    alpha_schedules,
    gamma_schedules,
    index_to_log_onehot,
)

B, L = 2, 16


@pytest.mark.parametrize("n", [2, 10, 100])
def test_schedules_match(n):
    for ours, theirs in ((alpha_schedules(n), ref_module.alpha_schedules(n)),
                         (gamma_schedules(n), ref_module.gamma_schedules(n))):
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b)
    s, r = VQDiffusionScheduler(9, n), diffusers.VQDiffusionScheduler(9, n)
    for name in VQDiffusionScheduler._TABLES:
        assert torch.equal(getattr(s, name), getattr(r, name)), name


@pytest.mark.parametrize("steps", [1, 2, 7, 10, 25, 50])
@pytest.mark.parametrize("classes", [5, 17])
def test_parity(classes, steps):
    ours, theirs = VQDiffusionScheduler(classes), diffusers.VQDiffusionScheduler(classes)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    g = torch.Generator().manual_seed(0)
    x = torch.full((B, L), classes - 1, dtype=torch.long)
    x[:, ::3] = torch.randint(0, classes - 1, (B, len(range(0, L, 3))), generator=g)
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in theirs.timesteps:
        logits = torch.randn(B, classes - 1, L, generator=g) * 2
        log_p_x0 = torch.log_softmax(logits, dim=1)
        if t > 0:
            torch.testing.assert_close(ours.q_posterior(log_p_x0, x, t), theirs.q_posterior(log_p_x0, x, t),
                                       atol=1e-5, rtol=1e-5)
        a = ours.step(log_p_x0, t, x, generator=ga).prev_sample
        b = theirs.step(log_p_x0, t, x, generator=gb).prev_sample
        assert torch.equal(a, b), f"tokens differ at t={int(t)}"
        x = b


def test_posterior_is_normalised_and_masked_tokens_stay_masked_forward():
    sched = VQDiffusionScheduler(7)
    x = torch.tensor([[6, 0, 3, 6]])
    log_p = torch.log_softmax(torch.randn(1, 6, 4), dim=1)
    post = sched.q_posterior(log_p, x, 40)
    # p(x_{t-1} | x_t) is a distribution over K classes for every token
    torch.testing.assert_close(post.logsumexp(dim=1), torch.zeros(1, 4), atol=1e-5, rtol=0)
    # an unmasked x_t cannot come from a masked x_{t-1}
    assert post[0, 6, 1].exp() < 1e-6 and post[0, 6, 2].exp() < 1e-6
    onehot = index_to_log_onehot(x, 7)
    assert onehot.shape == (1, 7, 4) and onehot.exp().sum(1).allclose(torch.ones(1, 4))


def test_bad_input():
    with pytest.raises(ValueError, match="num_vec_classes"):
        VQDiffusionScheduler(1)
    sched = VQDiffusionScheduler(5)
    with pytest.raises(ValueError, match="num_train_timesteps=100"):
        sched.set_timesteps(101)
    x = torch.zeros(B, L, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[batch, 4, pixels\]"):
        sched.step(torch.zeros(B, 5, L), 3, x)
    with pytest.raises(ValueError, match="outside"):
        sched.step(torch.zeros(B, 4, L), 100, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_device_sync_in_step():
    sched = VQDiffusionScheduler(9)
    sched.set_timesteps(5, device="cuda")
    steps = range(4, -1, -1)  # host timesteps
    x = torch.full((B, L), 8, dtype=torch.long, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in steps:
            log_p = torch.log_softmax(torch.randn(B, 8, L, device="cuda"), dim=1)
            x = sched.step(log_p, t, x).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_begin_index_is_recorded():
    assert_begin_index_stored(VQDiffusionScheduler(num_vec_classes=8), 10)
