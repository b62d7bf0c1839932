"""CosineDPMSolverMultistepScheduler: seeded parity with Diffusers, bad input, no syncs."""

from __future__ import annotations


import pytest
import torch

import diffusers
from kernel_contracts.testing import add_noise_parity, assert_matches_reference_api, scheduler_parity
from kernel_sched_cosine_dpmsolver import CosineDPMSolverMultistepScheduler

SHAPE = (2, 3, 8)  # audio-like latents


def pair(**config):
    return CosineDPMSolverMultistepScheduler(**config), diffusers.CosineDPMSolverMultistepScheduler(**config)


def test_signature_and_defaults_match_diffusers():
    ref = diffusers.CosineDPMSolverMultistepScheduler
    assert_matches_reference_api(CosineDPMSolverMultistepScheduler, ref, ordered_compatibles=True)
    ours, theirs = pair()
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    assert ours.init_noise_sigma == theirs.init_noise_sigma


CASES = [
    ({}, [1, 2, 7, 10, 25]),
    ({"solver_order": 1}, [10]),
    ({"solver_type": "heun"}, [10]),
    ({"sigma_schedule": "karras"}, [10]),
    ({"prediction_type": "epsilon"}, [7]),
    ({"lower_order_final": False, "euler_at_final": True}, [10]),
]


@pytest.mark.parametrize(
    "config,n", [(c, n) for c, ns in CASES for n in ns],
    ids=lambda v: str(v) if isinstance(v, int) else "-".join(f"{k}={v}" for k, v in v.items()) or "default",
)
def test_cosine_parity(config, n):
    ours, theirs = pair(**config)
    assert scheduler_parity(ours, theirs, n, shape=SHAPE) == n
    add_noise_parity(ours, theirs, shape=SHAPE)


def test_per_item_generators():
    ours, theirs = pair()
    for s in (ours, theirs):
        s.set_timesteps(6)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * ours.init_noise_sigma
    a, b = x.clone(), x.clone()
    ga = [torch.Generator().manual_seed(s) for s in (1, 2)]
    gb = [torch.Generator().manual_seed(s) for s in (1, 2)]
    for t in theirs.timesteps:
        out = torch.tanh(ours.scale_model_input(a, t))
        a = ours.step(out, t, a, generator=ga).prev_sample
        b = theirs.step(out, t, b, generator=gb).prev_sample
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"sigma_schedule": "linear"}, ["sigma_schedule", "exponential"]),
        ({"solver_type": "rk4"}, ["solver_type", "midpoint"]),
        ({"solver_order": 3}, ["solver_order", "1, 2"]),
        ({"prediction_type": "sample"}, ["prediction_type", "v_prediction"]),
        ({"final_sigmas_type": "one"}, ["final_sigmas_type"]),
    ],
)
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as err:
        CosineDPMSolverMultistepScheduler(**kwargs)
    assert all(w in str(err.value) for w in words)


def test_bad_calls():
    s = CosineDPMSolverMultistepScheduler()
    x = torch.zeros(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, s.timesteps[0], x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loop_has_no_sync():
    s = CosineDPMSolverMultistepScheduler()
    s.set_timesteps(30, device="cuda")
    x = torch.randn(SHAPE, device="cuda") * s.init_noise_sigma
    gen = torch.Generator("cuda").manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in s.timesteps:
            x = s.step(torch.tanh(s.scale_model_input(x, t)), t, x, generator=gen).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()
