"""Flow-matching schedulers: step-by-step parity with Diffusers, plus bad input and no-sync checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffusers
from kernel_contracts.testing import scheduler_parity
from kernel_sched_flow_match import (
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    calculate_shift,
)

STEPS = [1, 2, 7, 10, 25, 50]
SHAPE = (2, 3, 4, 4)


class _Ref:
    """Diffusers' flow-match schedulers lack scale_model_input/init_noise_sigma; add the identity ones."""

    init_noise_sigma = 1.0

    def __init__(self, inner):
        self.__dict__["inner"] = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def scale_model_input(self, sample, timestep=None):
        return sample


EULER_OPTIONS = {
    "default": ({}, {}),
    "shift3": ({"shift": 3.0}, {}),
    "dynamic-exp": ({"use_dynamic_shifting": True}, {"mu": 0.8}),
    "dynamic-linear": ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"mu": 1.2}),
    "terminal": ({"shift": 2.0, "shift_terminal": 0.1}, {}),
    "karras": ({"shift": 3.0, "use_karras_sigmas": True}, {}),
    "exponential": ({"use_exponential_sigmas": True}, {}),
    "beta": ({"use_beta_sigmas": True}, {}),
    "invert": ({"invert_sigmas": True}, {}),
    "stochastic": ({"stochastic_sampling": True, "shift": 3.0}, {}),
}


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("option", sorted(EULER_OPTIONS))
def test_euler_parity(option, steps):
    config, set_kwargs = EULER_OPTIONS[option]
    if option == "terminal" and steps == 1:
        with pytest.raises(ValueError, match="shift_terminal"):
            FlowMatchEulerDiscreteScheduler(**config).set_timesteps(1)
        return  # the reference produces NaN sigmas here
    ours = FlowMatchEulerDiscreteScheduler(**config)
    theirs = _Ref(diffusers.FlowMatchEulerDiscreteScheduler(**config))
    n = scheduler_parity(ours, theirs, steps, shape=SHAPE, set_timesteps_kwargs=set_kwargs)
    assert n == steps
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", ["sigmas", "timesteps", "both"])
def test_euler_custom_schedule_parity(case):
    sig = [1.0, 0.8, 0.55, 0.3, 0.1]
    kwargs = {"sigmas": sig} if case == "sigmas" else {"timesteps": [s * 1000 for s in sig]}
    if case == "both":
        kwargs = {"sigmas": sig, "timesteps": [900.0, 700.0, 500.0, 300.0, 100.0]}
    for config in ({"shift": 3.0}, {"use_dynamic_shifting": True}):
        extra = {"mu": 0.7} if config.get("use_dynamic_shifting") else {}
        ours = FlowMatchEulerDiscreteScheduler(**config)
        theirs = _Ref(diffusers.FlowMatchEulerDiscreteScheduler(**config))
        scheduler_parity(ours, theirs, None, shape=SHAPE, set_timesteps_kwargs={**kwargs, **extra})


def test_euler_per_token_timesteps_parity():
    ours = FlowMatchEulerDiscreteScheduler(shift=3.0)
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours.set_timesteps(8)
    theirs.set_timesteps(8)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 6, 4, generator=g)
    for i, t in enumerate(theirs.timesteps):
        per_token = torch.full((2, 6), float(t)) - torch.arange(6.0) * 3.0 * (i % 2)
        out = torch.randn(2, 6, 4, generator=g)
        a = ours.step(out, t, sample, per_token_timesteps=per_token).prev_sample
        b = theirs.step(out, t, sample, per_token_timesteps=per_token).prev_sample
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        sample = b


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_scale_noise_parity(shift):
    ours = FlowMatchEulerDiscreteScheduler(shift=shift)
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    t = torch.stack([theirs.timesteps[2], theirs.timesteps[7]])
    torch.testing.assert_close(ours.scale_noise(x0, t, noise), theirs.scale_noise(x0, t, noise), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.scale_noise(x0, t, noise), atol=1e-6, rtol=0)
    ours.set_begin_index(3)
    theirs.set_begin_index(3)
    t1 = theirs.timesteps[3:4]
    torch.testing.assert_close(ours.scale_noise(x0[:1], t1, noise[:1]), theirs.scale_noise(x0[:1], t1, noise[:1]))


def test_set_shift_and_init_tables_match():
    ours, theirs = FlowMatchEulerDiscreteScheduler(shift=3.0), diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    assert ours.sigma_min == pytest.approx(theirs.sigma_min) and ours.sigma_max == pytest.approx(theirs.sigma_max)
    ours.set_shift(5.0)
    theirs.set_shift(5.0)
    assert ours.shift == 5.0 and ours.config.shift == 3.0
    scheduler_parity(ours, _Ref(theirs), 6, shape=SHAPE)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_heun_parity(shift, steps):
    ours = FlowMatchHeunDiscreteScheduler(shift=shift)
    theirs = _Ref(diffusers.FlowMatchHeunDiscreteScheduler(shift=shift))
    n = scheduler_parity(ours, theirs, steps, shape=SHAPE)
    assert n == 2 * steps - 1


@pytest.mark.parametrize("steps", [2, 10])
def test_heun_churn_parity(steps):
    ours = FlowMatchHeunDiscreteScheduler(shift=2.0)
    theirs = _Ref(diffusers.FlowMatchHeunDiscreteScheduler(shift=2.0))
    scheduler_parity(ours, theirs, steps, shape=SHAPE,
                     step_kwargs={"s_churn": 1.5, "s_tmin": 0.2, "s_tmax": 0.9, "s_noise": 1.003})


def test_heun_scale_noise_parity():
    ours, theirs = FlowMatchHeunDiscreteScheduler(), diffusers.FlowMatchHeunDiscreteScheduler()
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = theirs.timesteps[3]
    torch.testing.assert_close(ours.scale_noise(x0, t, noise), theirs.scale_noise(x0, t, noise))
    assert ours.step_index == theirs.step_index == 4  # repeated timestep: the second match


@pytest.mark.parametrize("seq_len", [256, 1024, 4096, 8000])
def test_calculate_shift_matches_flux(seq_len):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as ref

    assert calculate_shift(seq_len) == pytest.approx(ref(seq_len), abs=1e-12)
    assert calculate_shift(seq_len, 64, 1024, 0.3, 1.5) == pytest.approx(ref(seq_len, 64, 1024, 0.3, 1.5), abs=1e-12)


def test_exact_velocity_recovers_x0():
    """With the true velocity ``noise - x0`` Euler is exact on the straight path."""
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(7)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(noise - x0, t, x).prev_sample
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- bad input
def test_bad_options_name_accepted_values():
    with pytest.raises(ValueError, match="time_shift_type.*exponential, linear"):
        FlowMatchEulerDiscreteScheduler(time_shift_type="cubic")
    with pytest.raises(ValueError, match="only one of"):
        FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True, use_beta_sigmas=True)
    with pytest.raises(ValueError, match="shift_terminal"):
        FlowMatchEulerDiscreteScheduler(shift_terminal=1.5)


def test_bad_set_timesteps():
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="mu"):
        sched.set_timesteps(10)
    sched = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="at least 1"):
        sched.set_timesteps(0)
    with pytest.raises(TypeError, match="num_inference_steps"):
        sched.set_timesteps(2.5)
    with pytest.raises(ValueError, match="must match"):
        sched.set_timesteps(3, sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="same length"):
        sched.set_timesteps(sigmas=[1.0, 0.5], timesteps=[900.0])
    with pytest.raises(ValueError, match="needs num_inference_steps"):
        sched.set_timesteps()
    with pytest.raises(ValueError, match="num_inference_steps"):
        FlowMatchHeunDiscreteScheduler().set_timesteps(-1)


@pytest.mark.parametrize("cls", [FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler])
def test_step_errors(cls):
    sched = cls()
    x = torch.randn(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.step(x, torch.tensor(999.0), x)
    sched.set_timesteps(2)
    with pytest.raises(ValueError, match="integer timestep"):
        sched.step(x, 3, x)
    with pytest.raises(ValueError, match="not one of the scheduler.s timesteps"):
        sched.step(x, torch.tensor(123.456), x)
    for t in sched.timesteps:
        x = sched.step(x, t, x).prev_sample
    with pytest.raises(ValueError, match="set_timesteps again"):
        sched.step(x, sched.timesteps[-1], x)


def test_step_keeps_inputs_and_dtype():
    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(3)
    x = torch.randn(SHAPE, dtype=torch.float16)
    out = torch.randn(SHAPE, dtype=torch.float16)
    x_copy = x.clone()
    y = sched.step(out, sched.timesteps[0], x).prev_sample
    assert y.dtype == torch.float16 and y.shape == x.shape
    assert torch.equal(x, x_copy)


def test_config_round_trip(tmp_path):
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, time_shift_type="linear")
    sched.save_config(tmp_path)
    ref = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path)
    assert ref.config.shift == 3.0 and ref.config.time_shift_type == "linear"
    back = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path)
    assert dict(back.config) == dict(sched.config)
    heun = FlowMatchHeunDiscreteScheduler.from_config(sched.config)
    assert heun.config.shift == 3.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", [FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler])
def test_no_host_device_sync_in_step(cls):
    sched = cls(shift=3.0)
    sched.set_timesteps(6, device="cuda")
    sched.set_begin_index(0)
    x = torch.randn(SHAPE, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in sched.timesteps:
            x = sched.step(0.1 * x, t, x).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_heun_add_noise_takes_a_batch_of_timesteps():
    """add_noise (ours; Diffusers' Heun has only scale_noise) noises each item at its own timestep."""
    import torch

    from kernel_sched_flow_match import FlowMatchHeunDiscreteScheduler

    s = FlowMatchHeunDiscreteScheduler()
    s.set_timesteps(5)
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.stack([s.timesteps[0], s.timesteps[-1]])
    out = s.add_noise(x0, noise, t)
    sig = t / s.config.num_train_timesteps
    expected = sig.view(2, 1, 1, 1) * noise + (1 - sig.view(2, 1, 1, 1)) * x0
    torch.testing.assert_close(out, expected)
