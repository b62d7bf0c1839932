"""UniPCMultistepScheduler: parity with Diffusers, bad input, swapping, no syncs."""

from __future__ import annotations


import numpy as np
import pytest
import torch

import diffusers
from kernel_contracts.testing import add_noise_parity, assert_matches_reference_api, run_meta_loop, scheduler_parity
from kernel_sched_unipc import UniPCMultistepScheduler

SHAPE = (2, 3, 4, 4)


def pair(**config):
    return UniPCMultistepScheduler(**config), diffusers.UniPCMultistepScheduler(**config)


def test_signature_and_defaults_match_diffusers():
    ref = diffusers.UniPCMultistepScheduler
    assert_matches_reference_api(UniPCMultistepScheduler, ref)


CASES = [
    ({}, [1, 2, 7, 10, 25, 50]),
    ({"solver_order": 3}, [1, 2, 7, 10, 25, 50]),
    ({"solver_order": 1}, [10]),
    # bh1 and the noise-prediction form divide by h, infinite on a final step onto sigma = 0
    # (NaN in Diffusers as well), so they are compared with final_sigmas_type="sigma_min"
    ({"solver_type": "bh1", "final_sigmas_type": "sigma_min"}, [10]),
    ({"solver_type": "bh1", "solver_order": 3, "final_sigmas_type": "sigma_min"}, [10]),
    ({"predict_x0": False, "final_sigmas_type": "sigma_min"}, [10]),
    ({"predict_x0": False, "solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}, [10]),
    ({"predict_x0": False, "prediction_type": "v_prediction", "final_sigmas_type": "sigma_min"}, [7]),
    ({"predict_x0": False, "prediction_type": "sample", "final_sigmas_type": "sigma_min"}, [7]),
    ({"lower_order_final": False, "solver_order": 3, "final_sigmas_type": "sigma_min"}, [10]),
    ({"disable_corrector": [0, 3]}, [10]),
    ({"final_sigmas_type": "sigma_min"}, [10]),
    ({"use_karras_sigmas": True}, [10, 25]),
    ({"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}, [10]),
    ({"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}, [10]),
    ({"use_exponential_sigmas": True}, [10]),
    ({"use_beta_sigmas": True, "final_sigmas_type": "sigma_min"}, [10]),
    ({"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"}, [10]),
    ({"use_flow_sigmas": True, "prediction_type": "flow_prediction", "final_sigmas_type": "sigma_min"}, [7]),
    ({"use_flow_sigmas": True, "use_karras_sigmas": True, "prediction_type": "flow_prediction"}, [10]),
    ({"use_flow_sigmas": True, "shift_terminal": 0.1, "flow_shift": 2.0, "prediction_type": "flow_prediction"}, [10]),
    ({"prediction_type": "v_prediction", "beta_schedule": "scaled_linear"}, [10]),
    ({"prediction_type": "sample"}, [7]),
    ({"thresholding": True, "sample_max_value": 1.5}, [7]),
    ({"timestep_spacing": "leading", "steps_offset": 1}, [10]),
    ({"timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}, [10]),
    ({"solver_type": "midpoint"}, [7]),
]


@pytest.mark.parametrize(
    "config,n",
    [(c, n) for c, ns in CASES for n in ns],
    ids=lambda v: str(v) if isinstance(v, int) else "-".join(f"{k}={v}" for k, v in v.items()) or "default",
)
def test_unipc_parity(config, n):
    ours, theirs = pair(**config)
    assert scheduler_parity(ours, theirs, n, shape=SHAPE) == n
    add_noise_parity(ours, theirs, shape=SHAPE)


@pytest.mark.parametrize("time_shift_type", ["exponential", "linear"])
def test_dynamic_shifting_and_custom_sigmas(time_shift_type):
    cfg = {"use_flow_sigmas": True, "use_dynamic_shifting": True, "prediction_type": "flow_prediction",
           "time_shift_type": time_shift_type}
    ours, theirs = pair(**cfg)
    mu = 0.8 if time_shift_type == "exponential" else 1.5
    scheduler_parity(ours, theirs, 8, shape=SHAPE, set_timesteps_kwargs={"mu": mu})
    ours, theirs = pair(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=2.0)
    sig = np.array([1.0, 0.8, 0.6, 0.45, 0.3, 0.1])  # Diffusers needs an array here
    scheduler_parity(ours, theirs, None, shape=SHAPE, set_timesteps_kwargs={"sigmas": sig})


def test_solver_p_predictor():
    from kernel_sched_dpmsolver import DPMSolverMultistepScheduler

    ours = UniPCMultistepScheduler(solver_p=DPMSolverMultistepScheduler())
    theirs = diffusers.UniPCMultistepScheduler(solver_p=diffusers.DPMSolverMultistepScheduler())
    scheduler_parity(ours, theirs, 10, shape=SHAPE)


def test_from_config_swap():
    ddim_like = {
        "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "steps_offset": 1,
        "timestep_spacing": "leading", "prediction_type": "v_prediction",
    }
    ours = UniPCMultistepScheduler.from_config(ddim_like)
    theirs = diffusers.UniPCMultistepScheduler.from_config(ddim_like)
    scheduler_parity(ours, theirs, 10, shape=SHAPE)
    dpm = diffusers.DPMSolverMultistepScheduler(solver_type="heun").config
    ours = UniPCMultistepScheduler.from_config(dpm)
    assert ours.config.solver_type == diffusers.UniPCMultistepScheduler.from_config(dpm).config.solver_type == "bh2"


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"solver_type": "rk4"}, ["solver_type", "bh1", "bh2"]),
        ({"beta_schedule": "cosine"}, ["beta_schedule", "squaredcos_cap_v2"]),
        ({"timestep_spacing": "uniform"}, ["timestep_spacing", "trailing"]),
        ({"final_sigmas_type": "none"}, ["final_sigmas_type", "sigma_min"]),
        ({"shift_terminal": 0.1}, ["shift_terminal", "use_flow_sigmas"]),
        ({"solver_order": 0}, ["solver_order"]),
        ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, ["use_exponential_sigmas"]),
    ],
)
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as err:
        UniPCMultistepScheduler(**kwargs)
    assert all(w in str(err.value) for w in words)


def test_bad_calls():
    s = UniPCMultistepScheduler()
    x = torch.zeros(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, 999, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="use_flow_sigmas"):
        s.set_timesteps(sigmas=[0.9, 0.5])
    flow = UniPCMultistepScheduler(use_flow_sigmas=True)
    with pytest.raises(ValueError, match="descending"):
        flow.set_timesteps(sigmas=[0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match="mu"):
        UniPCMultistepScheduler(use_flow_sigmas=True, use_dynamic_shifting=True).set_timesteps(5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("config", [{}, {"solver_order": 3, "use_karras_sigmas": True}, {"predict_x0": False}])
def test_cuda_loop_has_no_sync(config):
    s = UniPCMultistepScheduler(**config)
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


META_CASES = [
    (UniPCMultistepScheduler, {}),
    (UniPCMultistepScheduler, {"solver_order": 3}),
    (UniPCMultistepScheduler, {"predict_x0": False, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
]

@pytest.mark.parametrize("cls,config", META_CASES)
def test_step_reads_no_device_values(cls, config):
    run_meta_loop(cls(**config), SHAPE)
