"""DPMSolverSDEScheduler and the Brownian-tree sampler: parity with Diffusers (same seed), bad input."""

from __future__ import annotations


import pytest
import torch

import diffusers
from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler as RefSampler
from kernel_contracts.testing import add_noise_parity, assert_matches_reference_api, scheduler_parity
from kernel_sched_dpmsolver_sde import BrownianTreeNoiseSampler, DPMSolverSDEScheduler

SHAPE = (2, 3, 4, 4)


def pair(**config):
    config.setdefault("noise_sampler_seed", 7)
    return DPMSolverSDEScheduler(**config), diffusers.DPMSolverSDEScheduler(**config)


def test_signature_and_defaults_match_diffusers():
    ref = diffusers.DPMSolverSDEScheduler
    assert_matches_reference_api(DPMSolverSDEScheduler, ref)
    assert DPMSolverSDEScheduler.order == ref.order == 2
    ours, theirs = DPMSolverSDEScheduler(), ref()
    torch.testing.assert_close(ours.sigmas, theirs.sigmas)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)


@pytest.mark.parametrize("seed", [0, [3, 4]])
def test_brownian_sampler_matches(seed):
    x = torch.zeros(SHAPE)
    ours = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=seed)
    ref = RefSampler(x, 0.03, 14.6, seed=seed)
    for a, b in [(14.6, 9.0), (9.0, 3.2), (3.2, 3.0), (0.5, 0.03), (2.0, 5.0)]:
        torch.testing.assert_close(ours(torch.tensor(a), torch.tensor(b)), ref(torch.tensor(a), torch.tensor(b)))


CASES = [
    ({}, [1, 2, 7, 10, 25]),
    ({"use_karras_sigmas": True}, [7, 10]),
    ({"use_exponential_sigmas": True}, [10]),
    ({"use_beta_sigmas": True}, [10]),
    ({"prediction_type": "v_prediction", "beta_schedule": "scaled_linear"}, [10]),
    ({"timestep_spacing": "leading", "steps_offset": 1}, [10]),
    ({"timestep_spacing": "trailing"}, [10]),
    ({"beta_schedule": "squaredcos_cap_v2"}, [7]),
]


@pytest.mark.parametrize(
    "config,n", [(c, n) for c, ns in CASES for n in ns],
    ids=lambda v: str(v) if isinstance(v, int) else "-".join(f"{k}={v}" for k, v in v.items()) or "default",
)
def test_sde_parity(config, n):
    ours, theirs = pair(**config)
    assert scheduler_parity(ours, theirs, n, shape=SHAPE) == 2 * n - 1
    assert len(ours.timesteps) == len(theirs.timesteps)
    add_noise_parity(ours, theirs, shape=SHAPE)


def test_s_noise_and_tuple_output():
    ours, theirs = pair()
    scheduler_parity(ours, theirs, 6, shape=SHAPE, step_kwargs={"s_noise": 0.7})
    ours.set_timesteps(3)
    x = torch.randn(SHAPE)
    out = ours.step(x, ours.timesteps[0], x, return_dict=False)
    assert isinstance(out, tuple) and len(out) == 2


def test_from_config_swap():
    ddim_like = {
        "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "steps_offset": 1,
        "timestep_spacing": "leading", "noise_sampler_seed": 11,
    }
    ours = DPMSolverSDEScheduler.from_config(ddim_like)
    theirs = diffusers.DPMSolverSDEScheduler.from_config(ddim_like)
    scheduler_parity(ours, theirs, 8, shape=SHAPE)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"beta_schedule": "cosine"}, ["beta_schedule", "squaredcos_cap_v2"]),
        ({"timestep_spacing": "uniform"}, ["timestep_spacing", "trailing"]),
        ({"prediction_type": "sample"}, ["prediction_type", "epsilon", "v_prediction"]),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, ["use_beta_sigmas"]),
    ],
)
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as err:
        DPMSolverSDEScheduler(**kwargs)
    assert all(w in str(err.value) for w in words)


def test_bad_calls():
    s = DPMSolverSDEScheduler()
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(TypeError, match="num_inference_steps"):
        s.set_timesteps(None)
    s.set_timesteps(4)
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="not one of"):
        s.step(x, torch.tensor(12345.0), x)
    with pytest.raises(ValueError, match="seed"):
        BrownianTreeNoiseSampler(x, 0.1, 1.0, seed=[1, 2, 3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loop_has_no_sync():
    s = DPMSolverSDEScheduler(noise_sampler_seed=0, use_karras_sigmas=True)
    s.set_timesteps(30, device="cuda")
    x = torch.randn(SHAPE, device="cuda") * float(s.init_noise_sigma)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in s.timesteps:
            x = s.step(torch.tanh(s.scale_model_input(x, t)), t, x).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()
