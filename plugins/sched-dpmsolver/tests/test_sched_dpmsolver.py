"""DPM-Solver multistep / singlestep / inverse: parity with Diffusers, bad input, swapping, no syncs."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import diffusers
from kernel_contracts.testing import add_noise_parity, run_meta_loop, scheduler_parity
from kernel_sched_dpmsolver import (
    DPMSolverMultistepInverseScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
)

SHAPE = (2, 4, 4, 4)  # four channels so learned-variance slicing (first 3) is exercised
CLASSES = [DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, DPMSolverMultistepInverseScheduler]


def pair(cls, **config):
    return cls(**config), getattr(diffusers, cls.__name__)(**config)


# ---------------------------------------------------------------------------- signatures
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_constructor_matches_diffusers(cls):
    ref = getattr(diffusers, cls.__name__)
    ours_sig = inspect.signature(cls.__init__).parameters
    ref_sig = inspect.signature(ref.__init__).parameters
    assert list(ours_sig) == list(ref_sig)
    for name, p in ref_sig.items():
        if name != "self":
            assert ours_sig[name].default == p.default or (
                isinstance(p.default, float) and np.isinf(p.default) and np.isinf(ours_sig[name].default)
            ), name
    assert set(cls._compatibles) == set(ref._compatibles)
    assert cls.order == ref.order
    ours, theirs = cls(), ref()
    assert {k: v for k, v in ours.config.items()} == {k: v for k, v in theirs.config.items() if not k.startswith("_")}
    torch.testing.assert_close(ours.sigmas, theirs.sigmas)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_set_timesteps_and_step_signatures(cls):
    ref = getattr(diffusers, cls.__name__)
    for name in ("set_timesteps", "step"):
        assert list(inspect.signature(getattr(cls, name)).parameters) == list(
            inspect.signature(getattr(ref, name)).parameters
        ), name


# ---------------------------------------------------------------------------- multistep parity
MULTISTEP_CASES = [
    ({}, [1, 2, 7, 10, 25, 50]),
    ({"solver_order": 3}, [1, 2, 7, 10, 25]),
    ({"solver_order": 1}, [7]),
    ({"solver_type": "heun"}, [10]),
    ({"solver_order": 3, "solver_type": "heun", "lower_order_final": False}, [10, 25]),
    ({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}, [10]),
    ({"algorithm_type": "dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"}, [10]),
    ({"algorithm_type": "dpmsolver", "solver_type": "heun", "final_sigmas_type": "sigma_min"}, [7]),
    ({"algorithm_type": "sde-dpmsolver++"}, [2, 10, 25]),
    ({"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, [10]),
    ({"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}, [7]),
    ({"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"}, [10]),
    ({"algorithm_type": "sde-dpmsolver", "solver_type": "heun", "final_sigmas_type": "sigma_min"}, [7]),
    ({"use_karras_sigmas": True}, [1, 10, 25]),
    ({"use_karras_sigmas": True, "beta_schedule": "scaled_linear", "solver_order": 3}, [10]),
    ({"use_exponential_sigmas": True}, [10]),
    ({"use_beta_sigmas": True}, [10]),
    ({"use_lu_lambdas": True}, [10]),
    ({"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"}, [10]),
    ({"final_sigmas_type": "sigma_min", "euler_at_final": True}, [10]),
    ({"euler_at_final": True}, [25]),
    ({"prediction_type": "v_prediction", "beta_schedule": "scaled_linear"}, [10]),
    ({"prediction_type": "sample"}, [7]),
    ({"algorithm_type": "dpmsolver", "prediction_type": "v_prediction", "final_sigmas_type": "sigma_min"}, [7]),
    ({"algorithm_type": "dpmsolver", "prediction_type": "sample", "final_sigmas_type": "sigma_min"}, [7]),
    ({"thresholding": True, "sample_max_value": 1.5}, [7]),
    ({"thresholding": True, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}, [7]),
    ({"timestep_spacing": "leading", "steps_offset": 1}, [10]),
    ({"timestep_spacing": "trailing"}, [10]),
    ({"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"}, [10]),
    ({"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}, [10]),
    ({"algorithm_type": "deis", "solver_type": "logrho", "final_sigmas_type": "sigma_min"}, [7]),
    ({"trained_betas": np.linspace(0.0001, 0.02, 1000).tolist()}, [7]),
]


@pytest.mark.parametrize(
    "config,n",
    [(c, n) for c, ns in MULTISTEP_CASES for n in ns],
    ids=lambda v: str(v) if isinstance(v, int) else "-".join(f"{k}={v}" for k, v in v.items() if k != "trained_betas") or "default",
)
def test_multistep_parity(config, n):
    ours, theirs = pair(DPMSolverMultistepScheduler, **config)
    assert scheduler_parity(ours, theirs, n, shape=SHAPE) == n
    add_noise_parity(ours, theirs, shape=SHAPE)


def test_multistep_custom_timesteps_and_mu():
    ours, theirs = pair(DPMSolverMultistepScheduler)
    ts = [901, 700, 480, 300, 120, 31]
    scheduler_parity(ours, theirs, None, shape=SHAPE, set_timesteps_kwargs={"timesteps": ts})
    cfg = {"use_flow_sigmas": True, "use_dynamic_shifting": True, "prediction_type": "flow_prediction"}
    ours, theirs = pair(DPMSolverMultistepScheduler, **cfg)
    scheduler_parity(ours, theirs, 8, shape=SHAPE, set_timesteps_kwargs={"mu": 0.7})


def test_multistep_variance_noise_matches():
    ours, theirs = pair(DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++")
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g)
    a, b = x.clone(), x.clone()
    for i, t in enumerate(theirs.timesteps):
        out = torch.sin(a + i)
        noise = torch.randn(SHAPE, generator=g)
        a = ours.step(out, t, a, variance_noise=noise).prev_sample
        b = theirs.step(out, t, b, variance_noise=noise).prev_sample
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_multistep_begin_index_and_mid_schedule_start():
    ours, theirs = pair(DPMSolverMultistepScheduler)
    for s in (ours, theirs):
        s.set_timesteps(10)
        s.set_begin_index(4)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    a, b = x.clone(), x.clone()
    for i, t in enumerate(theirs.timesteps[4:]):
        out = torch.cos(a * 0.3 + i)
        a = ours.step(out, t, a).prev_sample
        b = theirs.step(out, t, b).prev_sample
        assert ours.step_index == theirs.step_index
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # without begin index: the search starts wherever the first timestep is
    ours, theirs = pair(DPMSolverMultistepScheduler)
    for s in (ours, theirs):
        s.set_timesteps(10)
    ours.step(x, theirs.timesteps[3], x)
    theirs.step(x, theirs.timesteps[3], x)
    assert ours.step_index == theirs.step_index == 4


@pytest.mark.parametrize("cls", [DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler], ids=lambda c: c.__name__)
@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
@pytest.mark.parametrize("algorithm_type", ["dpmsolver++", "dpmsolver"])
def test_learned_variance_drops_the_variance_channels(cls, variance_type, algorithm_type):
    cfg = {"variance_type": variance_type, "algorithm_type": algorithm_type, "final_sigmas_type": "sigma_min"}
    ours, theirs = pair(cls, **cfg)
    shape = (2, 3, 4, 4)  # model output carries 3 noise + 3 variance channels

    def model(x, t, i):
        return torch.cat([torch.sin(x + i), torch.cos(x)], dim=1)

    scheduler_parity(ours, theirs, 7, shape=shape, model=model)


def test_return_tuple():
    s = DPMSolverMultistepScheduler()
    s.set_timesteps(4)
    x = torch.ones(SHAPE)
    out = s.step(x, s.timesteps[0], x, return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == SHAPE


# ---------------------------------------------------------------------------- singlestep parity
SINGLESTEP_CASES = [
    ({}, [1, 2, 7, 10, 25, 50]),
    ({"solver_order": 3}, [1, 2, 7, 9, 10, 25]),
    ({"solver_order": 1}, [7]),
    ({"solver_type": "heun"}, [10]),
    ({"solver_order": 3, "solver_type": "heun"}, [10]),
    ({"lower_order_final": True}, [10]),
    ({"lower_order_final": True, "solver_order": 3}, [9, 10, 11]),
    ({"final_sigmas_type": "sigma_min", "lower_order_final": False}, [10]),
    ({"final_sigmas_type": "sigma_min", "lower_order_final": False, "solver_order": 3}, [9]),
    ({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}, [10]),
    ({"algorithm_type": "dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"}, [10]),
    ({"algorithm_type": "dpmsolver", "solver_order": 3, "solver_type": "heun", "final_sigmas_type": "sigma_min"}, [9]),
    ({"algorithm_type": "sde-dpmsolver++"}, [10]),
    ({"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, [9]),
    ({"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun"}, [10]),
    ({"use_karras_sigmas": True}, [10, 25]),
    ({"use_exponential_sigmas": True}, [10]),
    ({"use_beta_sigmas": True}, [10]),
    ({"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"}, [10]),
    ({"prediction_type": "v_prediction"}, [10]),
    ({"thresholding": True}, [7]),
    ({"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"}, [10]),
]


@pytest.mark.parametrize(
    "config,n",
    [(c, n) for c, ns in SINGLESTEP_CASES for n in ns],
    ids=lambda v: str(v) if isinstance(v, int) else "-".join(f"{k}={v}" for k, v in v.items()) or "default",
)
def test_singlestep_parity(config, n):
    ours, theirs = pair(DPMSolverSinglestepScheduler, **config)
    scheduler_parity(ours, theirs, n, shape=SHAPE)
    assert ours.order_list == theirs.order_list
    assert ours.config.lower_order_final == theirs.config.lower_order_final
    add_noise_parity(ours, theirs, shape=SHAPE)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_singlestep_order_list(order, lower_order_final, final):
    ours, theirs = pair(DPMSolverSinglestepScheduler, solver_order=order, lower_order_final=lower_order_final,
                        final_sigmas_type=final)
    for steps in range(1, 13):
        if not lower_order_final and steps < order:
            continue
        assert ours.get_order_list(steps) == theirs.get_order_list(steps), steps


def test_singlestep_custom_timesteps():
    ours, theirs = pair(DPMSolverSinglestepScheduler)
    scheduler_parity(ours, theirs, None, shape=SHAPE, set_timesteps_kwargs={"timesteps": [900, 650, 400, 222, 90, 10]})


# ---------------------------------------------------------------------------- inverse parity
INVERSE_CASES = [
    ({}, [1, 2, 7, 10, 25, 50]),
    ({"solver_order": 3}, [10, 25]),
    ({"solver_type": "heun"}, [10]),
    ({"algorithm_type": "dpmsolver"}, [10]),
    ({"algorithm_type": "dpmsolver", "solver_order": 3}, [10]),
    ({"use_karras_sigmas": True}, [10]),
    ({"use_exponential_sigmas": True}, [10]),
    ({"use_beta_sigmas": True}, [10]),
    ({"use_flow_sigmas": True, "flow_shift": 2.0, "prediction_type": "flow_prediction"}, [10]),
    ({"timestep_spacing": "leading", "steps_offset": 1}, [10]),
    ({"timestep_spacing": "trailing"}, [10]),
    ({"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"}, [10]),
    ({"prediction_type": "v_prediction", "euler_at_final": True}, [10]),
    ({"thresholding": True}, [7]),
]


@pytest.mark.parametrize(
    "config,n",
    [(c, n) for c, ns in INVERSE_CASES for n in ns],
    ids=lambda v: str(v) if isinstance(v, int) else "-".join(f"{k}={v}" for k, v in v.items()) or "default",
)
def test_inverse_parity(config, n):
    ours, theirs = pair(DPMSolverMultistepInverseScheduler, **config)
    scheduler_parity(ours, theirs, n, shape=SHAPE)
    assert ours.noisiest_timestep == theirs.noisiest_timestep
    add_noise_parity(ours, theirs, shape=SHAPE)


# ---------------------------------------------------------------------------- swapping
DDIM_LIKE = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_from_config_swap_matches_diffusers(cls):
    ours = cls.from_config(dict(DDIM_LIKE))
    theirs = getattr(diffusers, cls.__name__).from_config(dict(DDIM_LIKE))
    assert ours.config.prediction_type == "v_prediction"
    scheduler_parity(ours, theirs, 10, shape=SHAPE)
    # and back: the DDIM-only keys survive the round trip
    assert ours.config["clip_sample"] is False


def test_swap_between_solvers_maps_aliases():
    deis_like = dict(DPMSolverMultistepScheduler().config, algorithm_type="deis", solver_type="logrho")
    deis_like["final_sigmas_type"] = "sigma_min"
    ours = DPMSolverMultistepScheduler.from_config(deis_like)
    theirs = diffusers.DPMSolverMultistepScheduler.from_config(deis_like)
    assert ours.config.algorithm_type == theirs.config.algorithm_type == "dpmsolver++"
    assert ours.config.solver_type == theirs.config.solver_type == "midpoint"
    # Diffusers rejects a DEIS config with the default final_sigmas_type='zero' (it checks the
    # un-aliased name); the alias means dpmsolver++, for which a zero final sigma is fine.
    ours = DPMSolverMultistepScheduler.from_config(diffusers.DEISMultistepScheduler().config)
    assert ours.config.algorithm_type == "dpmsolver++" and ours.config.final_sigmas_type == "zero"
    ours = DPMSolverMultistepScheduler.from_config(diffusers.UniPCMultistepScheduler().config)
    assert ours.config.solver_type == "midpoint"


def test_save_and_load_config(tmp_path):
    s = DPMSolverMultistepScheduler(solver_order=3, use_karras_sigmas=True)
    s.save_config(tmp_path)
    theirs = diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path)
    assert theirs.config.solver_order == 3 and theirs.config.use_karras_sigmas
    back = DPMSolverMultistepScheduler.from_pretrained(tmp_path)
    assert dict(back.config) == dict(s.config)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"algorithm_type": "dpm"}, ["algorithm_type", "dpmsolver++"]),
        ({"solver_type": "rk4"}, ["solver_type", "midpoint", "heun"]),
        ({"beta_schedule": "cosine"}, ["beta_schedule", "scaled_linear"]),
        ({"solver_order": 4}, ["solver_order", "1, 2, 3"]),
        ({"prediction_type": "x0"}, ["prediction_type", "v_prediction"]),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, ["use_karras_sigmas"]),
    ],
)
def test_bad_constructor_arguments(cls, kwargs, words):
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    for w in words:
        assert w in str(err.value)


def test_bad_timestep_spacing_and_final_sigmas():
    with pytest.raises(ValueError, match="timestep_spacing.*linspace, leading, trailing"):
        DPMSolverMultistepScheduler(timestep_spacing="uniform")
    with pytest.raises(ValueError, match="final_sigmas_type"):
        DPMSolverMultistepScheduler(final_sigmas_type="one")
    with pytest.raises(ValueError, match="sigma_min"):
        DPMSolverMultistepScheduler(algorithm_type="dpmsolver")  # zero final sigma needs a data prediction
    with pytest.raises(ValueError, match="sde-dpmsolver"):
        DPMSolverSinglestepScheduler(algorithm_type="sde-dpmsolver")
    with pytest.raises(ValueError, match="solver_order"):
        DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver", solver_order=3, final_sigmas_type="sigma_min")


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_bad_num_inference_steps(cls):
    s = cls()
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(1001)
    with pytest.raises(TypeError, match="num_inference_steps"):
        s.set_timesteps(2.5)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_step_before_set_timesteps(cls):
    s = cls()
    x = torch.zeros(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, 999, x)


@pytest.mark.parametrize("cls", [DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler], ids=lambda c: c.__name__)
def test_bad_custom_timesteps(cls):
    s = cls()
    with pytest.raises(ValueError, match="descending"):
        s.set_timesteps(timesteps=[10, 500, 900])
    with pytest.raises(ValueError, match="exactly one"):
        s.set_timesteps(5, timesteps=[900, 500])
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        cls(use_karras_sigmas=True).set_timesteps(timesteps=[900, 500])
    with pytest.raises(ValueError, match="mu"):
        s.set_timesteps(5, mu=0.5)  # mu needs use_dynamic_shifting


def test_step_does_not_modify_inputs():
    s = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", thresholding=True)
    s.set_timesteps(5)
    x = torch.randn(SHAPE)
    out = torch.randn(SHAPE)
    x0, out0 = x.clone(), out.clone()
    for t in s.timesteps:
        s.step(out, t, x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x0) and torch.equal(out, out0)


# ---------------------------------------------------------------------------- no host syncs
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "cls,config",
    [
        (DPMSolverMultistepScheduler, {}),
        (DPMSolverMultistepScheduler, {"solver_order": 3, "use_karras_sigmas": True}),
        (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
        (DPMSolverSinglestepScheduler, {"solver_order": 3}),
        (DPMSolverMultistepInverseScheduler, {}),
    ],
)
def test_cuda_loop_has_no_sync(cls, config):
    s = cls(**config)
    s.set_timesteps(30, device="cuda")
    gen = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(SHAPE, device="cuda", generator=gen)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in s.timesteps:
            model_in = s.scale_model_input(x, t)
            x = s.step(torch.tanh(model_in), t, x, generator=gen).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()


META_CASES = [
    (DPMSolverMultistepScheduler, {}),
    (DPMSolverMultistepScheduler, {"solver_order": 3, "use_karras_sigmas": True, "thresholding": True}),
    (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    (DPMSolverSinglestepScheduler, {"solver_order": 3}),
    (DPMSolverMultistepInverseScheduler, {}),
]

@pytest.mark.parametrize("cls,config", META_CASES)
def test_step_reads_no_device_values(cls, config):
    run_meta_loop(cls(**config), SHAPE)
