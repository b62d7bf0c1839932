"""Euler / Euler-ancestral against the Diffusers oracle, plus bad input and sync-free loops."""

import inspect

import diffusers
import numpy as np
import pytest
import torch

from kernel_contracts.testing import add_noise_parity, scheduler_parity
from kernel_sched_euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

PAIRS = {
    "euler": (EulerDiscreteScheduler, diffusers.EulerDiscreteScheduler),
    "ancestral": (EulerAncestralDiscreteScheduler, diffusers.EulerAncestralDiscreteScheduler),
}
SHAPE = (1, 2, 4, 4)


def pair(name, **config):
    ours, theirs = PAIRS[name]
    return ours(**config), theirs(**config)


@pytest.mark.parametrize("name", PAIRS)
def test_constructor_matches_diffusers(name):
    ours, theirs = PAIRS[name]
    mine = {k: p.default for k, p in inspect.signature(ours.__init__).parameters.items() if k != "self"}
    ref = {k: p.default for k, p in inspect.signature(theirs.__init__).parameters.items() if k != "self"}
    assert mine == ref
    assert set(ours._compatibles) == set(theirs._compatibles)
    assert ours.order == theirs.order


EULER_CASES = [
    ({}, [1, 2, 7, 10, 25, 50]),
    ({"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, [2, 10]),
    ({"prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1}, [7, 25]),
    ({"use_karras_sigmas": True, "beta_schedule": "scaled_linear"}, [1, 10, 25]),
    ({"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}, [7]),
    ({"use_exponential_sigmas": True}, [2, 10]),
    ({"use_beta_sigmas": True}, [7, 25]),
    ({"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}, [10, 25]),
    ({"final_sigmas_type": "sigma_min", "beta_schedule": "squaredcos_cap_v2"}, [7]),
    ({"interpolation_type": "log_linear"}, [10]),
    ({"timestep_type": "continuous", "prediction_type": "v_prediction"}, [1, 10]),
    ({"trained_betas": np.linspace(1e-4, 0.03, 100).tolist(), "num_train_timesteps": 100}, [7, 50]),
]


@pytest.mark.parametrize("config,steps", EULER_CASES, ids=lambda v: str(v)[:60])
def test_euler_parity(config, steps):
    for n in steps:
        ours, theirs = pair("euler", **config)
        assert scheduler_parity(ours, theirs, n, shape=SHAPE) == n
    add_noise_parity(ours, theirs, shape=SHAPE)


def test_euler_churn_parity():
    ours, theirs = pair("euler", use_karras_sigmas=True)
    churn = {"s_churn": 0.5, "s_tmin": 0.3, "s_tmax": 20.0, "s_noise": 1.003}
    scheduler_parity(ours, theirs, 10, shape=SHAPE, step_kwargs=churn)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timesteps": [999, 800, 501.5, 250, 20]},
        {"sigmas": [14.0, 7.5, 3.0, 1.0, 0.2, 0.0]},
    ],
)
def test_euler_custom_schedule_parity(kwargs):
    ours, theirs = pair("euler")
    assert scheduler_parity(ours, theirs, None, shape=SHAPE, set_timesteps_kwargs=kwargs) == 5
    add_noise_parity(ours, theirs, shape=SHAPE)


def test_euler_get_velocity_parity():
    ours, theirs = pair("euler")
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x, noise = torch.randn(2, *SHAPE[1:]), torch.randn(2, *SHAPE[1:])
    t = theirs.timesteps[[1, 6]]
    torch.testing.assert_close(ours.get_velocity(x, noise, t), theirs.get_velocity(x, noise, t))


@pytest.mark.parametrize(
    "config,steps",
    [
        ({}, [1, 2, 7, 10, 25, 50]),
        ({"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, [7, 25]),
        ({"timestep_spacing": "leading", "steps_offset": 1, "rescale_betas_zero_snr": True}, [10]),
        ({"beta_schedule": "squaredcos_cap_v2"}, [7]),
    ],
    ids=str,
)
def test_ancestral_parity(config, steps):
    for n in steps:
        ours, theirs = pair("ancestral", **config)
        assert scheduler_parity(ours, theirs, n, shape=SHAPE) == n
    add_noise_parity(ours, theirs, shape=SHAPE)


def test_begin_index_and_add_noise_match_diffusers_mid_schedule():
    ours, theirs = pair("euler")
    for s in (ours, theirs):
        s.set_timesteps(10)
        s.set_begin_index(4)
    x, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = theirs.timesteps[4:5]
    torch.testing.assert_close(ours.add_noise(x, noise, t), theirs.add_noise(x, noise, t))
    out = 0.1 * x
    a = ours.step(out, t[0], ours.scale_model_input(x, t[0])).prev_sample
    b = theirs.step(out, t[0], theirs.scale_model_input(x, t[0])).prev_sample
    torch.testing.assert_close(a, b)
    assert ours.step_index == theirs.step_index == 5


def test_step_without_set_timesteps_uses_the_training_schedule_like_diffusers():
    ours, theirs = pair("euler")
    x = torch.randn(SHAPE)
    t = theirs.timesteps[0]
    a = ours.step(0.1 * x, t, x).prev_sample
    b = theirs.step(0.1 * x, t, x).prev_sample
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize(
    "config,needle",
    [
        ({"beta_schedule": "cosine"}, "squaredcos_cap_v2"),
        ({"timestep_spacing": "middle"}, "trailing"),
        ({"prediction_type": "noise"}, "v_prediction"),
    ],
)
def test_bad_config_names_accepted_values(name, config, needle):
    with pytest.raises(ValueError, match=needle):
        PAIRS[name][0](**config)


@pytest.mark.parametrize(
    "config,needle",
    [
        ({"interpolation_type": "cubic"}, "log_linear"),
        ({"timestep_type": "fractional"}, "continuous"),
        ({"final_sigmas_type": "one"}, "sigma_min"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "only one"),
    ],
)
def test_bad_euler_options(config, needle):
    with pytest.raises(ValueError, match=needle):
        EulerDiscreteScheduler(**config)


@pytest.mark.parametrize("name", PAIRS)
def test_bad_step_counts(name):
    s = PAIRS[name][0](num_train_timesteps=100)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        s.set_timesteps(101)
    with pytest.raises(ValueError, match="at least 1"):
        s.set_timesteps(0)
    with pytest.raises(TypeError, match="num_inference_steps"):
        s.set_timesteps(2.5)


def test_bad_custom_schedules():
    s = EulerDiscreteScheduler()
    with pytest.raises(ValueError, match="descending"):
        s.set_timesteps(timesteps=[10, 500, 999])
    with pytest.raises(ValueError, match="not both"):
        s.set_timesteps(timesteps=[999, 500], sigmas=[1.0, 0.0])
    with pytest.raises(ValueError, match="not both"):
        s.set_timesteps(10, timesteps=[999, 500])
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        EulerDiscreteScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[999, 500])


@pytest.mark.parametrize("name", PAIRS)
def test_integer_timestep_is_rejected(name):
    s = PAIRS[name][0]()
    s.set_timesteps(5)
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="loop index"):
        s.step(x, 3, x)
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        s.step(x, torch.tensor(123.25), x)


# ---------------------------------------------------------------------------- swapping
@pytest.mark.parametrize("name", PAIRS)
def test_from_config_swap_matches_diffusers(name):
    source = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1,
              "clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "leading"}
    ours_cls, theirs_cls = PAIRS[name]
    ours = ours_cls.from_config(diffusers.DDIMScheduler(**source).config)
    theirs = theirs_cls.from_config(diffusers.DDIMScheduler(**source).config)
    for key in inspect.signature(ours_cls.__init__).parameters:
        if key != "self":
            assert ours.config[key] == theirs.config[key], key
    scheduler_parity(ours, theirs, 7, shape=SHAPE)
    back = diffusers.DDIMScheduler.from_config(ours.config)
    assert back.config.clip_sample is False and back.config.set_alpha_to_one is False


def test_swap_keeps_sigma_range_but_not_foreign_flags():
    euler = EulerDiscreteScheduler(use_karras_sigmas=True, sigma_min=0.1)
    ours = EulerAncestralDiscreteScheduler.from_config(euler.config)
    theirs = diffusers.EulerAncestralDiscreteScheduler.from_config(diffusers.EulerDiscreteScheduler(**dict(
        use_karras_sigmas=True, sigma_min=0.1)).config)
    scheduler_parity(ours, theirs, 7, shape=SHAPE)


# ---------------------------------------------------------------------------- no host sync
def _loop(scheduler, device, steps=30):
    scheduler.set_timesteps(steps, device=device)
    x = torch.ones(SHAPE, device=device) * scheduler.init_noise_sigma
    g = torch.Generator(device=device).manual_seed(0) if device != "meta" else None
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        x = scheduler.step(0.1 * model_input, t, x, generator=g).prev_sample
    return x


@pytest.mark.parametrize("name", PAIRS)
def test_loop_never_reads_device_tensors(name):
    # Meta tensors have no data: any .item(), comparison or copy to the host in the loop raises.
    x = _loop(PAIRS[name][0](use_karras_sigmas=True) if name == "euler" else PAIRS[name][0](), "meta")
    assert x.device.type == "meta" and x.shape == SHAPE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", PAIRS)
def test_cuda_loop_has_no_sync(name):
    scheduler = PAIRS[name][0]()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = _loop(scheduler, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    reference = _loop(PAIRS[name][0](), "cpu") if name == "euler" else None
    if reference is not None:
        torch.testing.assert_close(x.cpu(), reference, atol=1e-4, rtol=1e-4)
