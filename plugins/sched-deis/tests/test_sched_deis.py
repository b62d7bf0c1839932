"""DEISMultistepScheduler: parity with Diffusers, bad input, swapping, no syncs."""

from __future__ import annotations


import pytest
import torch

import diffusers
from kernel_contracts.testing import add_noise_parity, assert_matches_reference_api, run_meta_loop, scheduler_parity
from kernel_sched_deis import DEISMultistepScheduler

SHAPE = (2, 3, 4, 4)


def pair(**config):
    return DEISMultistepScheduler(**config), diffusers.DEISMultistepScheduler(**config)


def test_signature_and_defaults_match_diffusers():
    ref = diffusers.DEISMultistepScheduler
    assert_matches_reference_api(DEISMultistepScheduler, ref)


CASES = [
    ({}, [1, 2, 7, 10, 25, 50]),
    ({"solver_order": 3}, [1, 2, 7, 10, 25, 50]),
    ({"solver_order": 1}, [10]),
    ({"solver_order": 3, "lower_order_final": False}, [10]),
    ({"use_karras_sigmas": True}, [10, 25]),
    ({"use_karras_sigmas": True, "solver_order": 3}, [10]),
    ({"use_exponential_sigmas": True}, [10]),
    ({"use_beta_sigmas": True}, [10]),
    ({"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"}, [10]),
    ({"prediction_type": "v_prediction", "beta_schedule": "scaled_linear"}, [10]),
    ({"prediction_type": "sample"}, [7]),
    ({"thresholding": True, "sample_max_value": 1.5}, [7]),
    ({"timestep_spacing": "leading", "steps_offset": 1}, [10]),
    ({"timestep_spacing": "trailing", "beta_schedule": "squaredcos_cap_v2"}, [10]),
    ({"algorithm_type": "dpmsolver++", "solver_type": "midpoint"}, [7]),
]


@pytest.mark.parametrize(
    "config,n",
    [(c, n) for c, ns in CASES for n in ns],
    ids=lambda v: str(v) if isinstance(v, int) else "-".join(f"{k}={v}" for k, v in v.items()) or "default",
)
def test_deis_parity(config, n):
    ours, theirs = pair(**config)
    assert scheduler_parity(ours, theirs, n, shape=SHAPE) == n
    add_noise_parity(ours, theirs, shape=SHAPE)


def test_mu_dynamic_shift():
    cfg = {"use_flow_sigmas": True, "use_dynamic_shifting": True, "prediction_type": "flow_prediction"}
    ours, theirs = pair(**cfg)
    scheduler_parity(ours, theirs, 8, shape=SHAPE, set_timesteps_kwargs={"mu": 0.9})


def test_from_config_swap():
    ddim_like = {
        "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "steps_offset": 1,
        "timestep_spacing": "leading",
    }
    ours = DEISMultistepScheduler.from_config(ddim_like)
    theirs = diffusers.DEISMultistepScheduler.from_config(ddim_like)
    scheduler_parity(ours, theirs, 10, shape=SHAPE)
    dpm = diffusers.DPMSolverMultistepScheduler(solver_type="heun").config
    ours = DEISMultistepScheduler.from_config(dpm)
    theirs = diffusers.DEISMultistepScheduler.from_config(dpm)
    assert ours.config.algorithm_type == theirs.config.algorithm_type == "deis"
    assert ours.config.solver_type == theirs.config.solver_type == "logrho"
    scheduler_parity(ours, theirs, 10, shape=SHAPE)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"algorithm_type": "sde-dpmsolver++"}, ["algorithm_type", "deis"]),
        ({"solver_type": "rk4"}, ["solver_type", "logrho"]),
        ({"beta_schedule": "cosine"}, ["beta_schedule", "squaredcos_cap_v2"]),
        ({"timestep_spacing": "uniform"}, ["timestep_spacing", "trailing"]),
        ({"solver_order": 0}, ["solver_order"]),
        ({"prediction_type": "x0"}, ["prediction_type"]),
    ],
)
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as err:
        DEISMultistepScheduler(**kwargs)
    assert all(w in str(err.value) for w in words)


def test_bad_steps_and_order_of_calls():
    s = DEISMultistepScheduler()
    x = torch.zeros(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, 999, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(5000)
    with pytest.raises(ValueError, match="mu"):
        s.set_timesteps(5, mu=1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("config", [{}, {"solver_order": 3, "use_karras_sigmas": True}])
def test_cuda_loop_has_no_sync(config):
    s = DEISMultistepScheduler(**config)
    s.set_timesteps(30, device="cuda")
    x = torch.randn(SHAPE, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in s.timesteps:
            x = s.step(torch.tanh(s.scale_model_input(x, t)), t, x).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()


META_CASES = [(DEISMultistepScheduler, {}), (DEISMultistepScheduler, {"solver_order": 3})]

@pytest.mark.parametrize("cls,config", META_CASES)
def test_step_reads_no_device_values(cls, config):
    run_meta_loop(cls(**config), SHAPE)
