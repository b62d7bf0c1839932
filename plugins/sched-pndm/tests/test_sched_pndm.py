"""PNDM / iPNDM against the Diffusers oracle, bad input, swapping and sync-free loops."""

import inspect

import diffusers
import numpy as np
import pytest
import torch

from kernel_contracts.testing import add_noise_parity, scheduler_parity
from kernel_sched_pndm import IPNDMScheduler, PNDMScheduler

SHAPE = (2, 2, 4, 4)
PAIRS = {"pndm": (PNDMScheduler, diffusers.PNDMScheduler), "ipndm": (IPNDMScheduler, diffusers.IPNDMScheduler)}


@pytest.mark.parametrize("name", PAIRS)
def test_constructor_matches_diffusers(name):
    ours, theirs = PAIRS[name]
    params = lambda cls: {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}  # noqa: E731
    assert params(ours) == params(theirs)
    assert set(ours._compatibles) == set(theirs._compatibles)
    assert ours.order == theirs.order


PNDM_CASES = [
    ({}, [4, 7, 10, 25, 50]),
    ({"skip_prk_steps": True}, [1, 2, 7, 10, 25, 50]),
    ({"skip_prk_steps": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}, [1, 2, 10]),
    ({"prediction_type": "v_prediction", "timestep_spacing": "linspace", "set_alpha_to_one": True}, [7, 25]),
    ({"skip_prk_steps": True, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
      "steps_offset": 1}, [7, 50]),
    ({"timestep_spacing": "trailing", "beta_schedule": "squaredcos_cap_v2"}, [10]),
    ({"trained_betas": np.linspace(1e-4, 0.03, 100).tolist(), "num_train_timesteps": 100, "skip_prk_steps": True},
     [2, 7, 100]),
    ({"num_train_timesteps": 100}, [4, 100]),
]


@pytest.mark.parametrize("config,steps", PNDM_CASES, ids=lambda v: str(v)[:70])
def test_pndm_parity(config, steps):
    for n in steps:
        ours, theirs = PNDMScheduler(**config), diffusers.PNDMScheduler(**config)
        assert scheduler_parity(ours, theirs, n, shape=SHAPE) == len(theirs.timesteps)
        np.testing.assert_array_equal(ours.prk_timesteps, theirs.prk_timesteps)
        np.testing.assert_array_equal(ours.plms_timesteps, theirs.plms_timesteps)
    add_noise_parity(ours, theirs, shape=SHAPE)


def test_pndm_tuple_output_and_python_int_timesteps_match():
    ours, theirs = PNDMScheduler(), diffusers.PNDMScheduler()
    for s in (ours, theirs):
        s.set_timesteps(6)
    x = torch.randn(SHAPE)
    a, b = x.clone(), x.clone()
    for t in theirs.timesteps.tolist():
        (a,) = ours.step(0.2 * a + 0.01 * t / 1000, t, a, return_dict=False)
        (b,) = theirs.step(0.2 * b + 0.01 * t / 1000, t, b, return_dict=False)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [1, 2, 7, 10, 25, 50])
def test_ipndm_parity(n):
    ours, theirs = IPNDMScheduler(), diffusers.IPNDMScheduler()
    assert scheduler_parity(ours, theirs, n, shape=SHAPE) == n
    torch.testing.assert_close(ours.betas, theirs.betas)
    torch.testing.assert_close(ours.alphas, theirs.alphas)


def test_ipndm_trained_betas_and_begin_index_match_diffusers():
    betas = (torch.sin(torch.linspace(1, 0, 9) * torch.pi / 2) ** 2 * 0.9).tolist()
    ours, theirs = IPNDMScheduler(trained_betas=betas), diffusers.IPNDMScheduler(trained_betas=betas)
    assert scheduler_parity(ours, theirs, 8, shape=SHAPE) == 8
    ours, theirs = IPNDMScheduler(), diffusers.IPNDMScheduler()
    x = torch.randn(SHAPE)
    for s in (ours, theirs):
        s.set_timesteps(10)
        s.set_begin_index(3)
    a = ours.step(0.1 * x, ours.timesteps[3], x).prev_sample
    b = theirs.step(0.1 * x, theirs.timesteps[3], x).prev_sample
    torch.testing.assert_close(a, b)
    assert ours.step_index == theirs.step_index == 4 and ours.begin_index == 3


def test_ipndm_starts_at_a_cpu_timestep_like_diffusers():
    ours, theirs = IPNDMScheduler(), diffusers.IPNDMScheduler()
    for s in (ours, theirs):
        s.set_timesteps(10)
    x = torch.randn(SHAPE)
    a = ours.step(0.1 * x, theirs.timesteps[5], x).prev_sample
    b = theirs.step(0.1 * x, theirs.timesteps[5], x).prev_sample
    torch.testing.assert_close(a, b)
    assert ours.step_index == theirs.step_index == 6


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "config,needle",
    [
        ({"beta_schedule": "sigmoid"}, "squaredcos_cap_v2"),
        ({"timestep_spacing": "middle"}, "trailing"),
        ({"prediction_type": "sample"}, "v_prediction"),
    ],
)
def test_pndm_bad_config_names_accepted_values(config, needle):
    with pytest.raises(ValueError, match=needle):
        PNDMScheduler(**config)


def test_pndm_bad_steps():
    s = PNDMScheduler(num_train_timesteps=100)
    x = torch.randn(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, 50, x)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        s.set_timesteps(101)
    with pytest.raises(ValueError, match="at least 1"):
        s.set_timesteps(0)
    with pytest.raises(TypeError, match="num_inference_steps"):
        s.set_timesteps(2.5)
    with pytest.raises(ValueError, match="skip_prk_steps"):
        s.set_timesteps(3)
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="Runge-Kutta"):
        s.step_plms(x, s.timesteps[0], x)


def test_ipndm_bad_input():
    s = IPNDMScheduler()
    with pytest.raises(ValueError, match="at least 1"):
        s.set_timesteps(0)
    with pytest.raises(TypeError, match="num_inference_steps"):
        s.set_timesteps("10")
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        s.set_timesteps(5)
        s.step(torch.zeros(SHAPE), 0.123, torch.zeros(SHAPE))
    s.set_timesteps(2)
    x = torch.zeros(SHAPE)
    for t in s.timesteps:
        x = s.step(x, t, x).prev_sample
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, s.timesteps[-1], x)
    with pytest.raises(ValueError, match="trained_betas"):
        IPNDMScheduler(trained_betas=[[0.1, 0.2]])


# ---------------------------------------------------------------------------- swapping
def test_from_config_swap_matches_diffusers():
    source = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1,
              "clip_sample": False, "set_alpha_to_one": False, "prediction_type": "v_prediction"}
    ours = PNDMScheduler.from_config(diffusers.DDIMScheduler(**source).config, skip_prk_steps=True)
    theirs = diffusers.PNDMScheduler.from_config(diffusers.DDIMScheduler(**source).config, skip_prk_steps=True)
    for key in inspect.signature(PNDMScheduler.__init__).parameters:
        if key != "self":
            assert ours.config[key] == theirs.config[key], key
    scheduler_parity(ours, theirs, 10, shape=SHAPE)
    back = diffusers.DDIMScheduler.from_config(ours.config)
    assert back.config.steps_offset == 1 and back.config.prediction_type == "v_prediction"
    assert IPNDMScheduler.from_config(ours.config).config.num_train_timesteps == 1000


# ---------------------------------------------------------------------------- no host sync
def _loop(scheduler, device, steps=12):
    scheduler.set_timesteps(steps, device=device)
    x = torch.ones(SHAPE, device=device)
    for t in scheduler.timesteps:
        x = scheduler.step(0.1 * scheduler.scale_model_input(x, t) + 0.05, t, x).prev_sample
    return x


CONFIGS = {"prk": (PNDMScheduler, {}), "plms": (PNDMScheduler, {"skip_prk_steps": True}), "ipndm": (IPNDMScheduler, {})}


@pytest.mark.parametrize("name", CONFIGS)
def test_loop_never_reads_device_tensors(name):
    cls, config = CONFIGS[name]
    # Meta tensors have no data: any .item(), comparison or host copy in the loop raises.
    x = _loop(cls(**config), "meta")
    assert x.device.type == "meta" and x.shape == SHAPE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", CONFIGS)
def test_cuda_loop_has_no_sync(name):
    cls, config = CONFIGS[name]
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = _loop(cls(**config), "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(x.cpu(), _loop(cls(**config), "cpu"), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- image-to-image: begin index and add_noise
def _exact_loop_from(s, k, x0, noise, prediction):
    """Noise ``x0`` to ``timesteps[k]``, ``set_begin_index(k)`` and run the rest with the exact model output."""
    from kernel_contracts import oracles

    x = s.add_noise(x0, noise, s.timesteps[k].reshape(1).repeat(x0.shape[0]))
    s.set_begin_index(k)
    for t in s.timesteps[k:]:
        x = s.step(oracles.exact_output(prediction, s.scale_model_input(x, t), x0, noise), t, x).prev_sample
    return float((x - x0).pow(2).mean().sqrt() / noise.pow(2).mean().sqrt())


@pytest.mark.parametrize("config,k", [({"skip_prk_steps": True}, 2), ({"skip_prk_steps": True}, 5), ({}, 4), ({}, 13)])
def test_pndm_starts_at_its_begin_index(config, k):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(SHAPE, generator=g) * 1.8 - 0.9, torch.randn(SHAPE, generator=g)
    s = PNDMScheduler(set_alpha_to_one=True, **config)
    s.set_timesteps(10)
    # The warm-up stage and the predictor/corrector pair follow the schedule position begin_index + counter.
    assert _exact_loop_from(s, k, x0, noise, "epsilon") < 1e-4
    s.set_timesteps(10)
    s.set_begin_index(k)
    device_timestep = torch.empty((), device="meta")  # unreadable: taken from the host schedule at the position
    assert s._timestep_value(device_timestep) == int(s.timesteps[k])
    s.set_timesteps(10)
    assert s.begin_index is None


def test_pndm_refuses_a_begin_index_inside_a_step():
    prk, plms = PNDMScheduler(), PNDMScheduler(skip_prk_steps=True)
    for s in (prk, plms):
        s.set_timesteps(10)
    with pytest.raises(ValueError, match="begin_index=5 falls inside a step"):
        prk.set_begin_index(5)  # second stage of a Runge-Kutta interval
    with pytest.raises(ValueError, match="begin_index=1"):
        plms.set_begin_index(1)  # the corrector of the first interval
    with pytest.raises(ValueError, match="non-negative int"):
        plms.set_begin_index(-2)
    prk.set_begin_index(12)
    assert prk.begin_index == 12


@pytest.mark.parametrize("k", [1, 4, 9])
def test_ipndm_add_noise_then_begin_index_returns_the_image(k):
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(SHAPE, generator=g) * 1.8 - 0.9, torch.randn(SHAPE, generator=g)
    s = IPNDMScheduler()
    s.set_timesteps(10)
    t = s.timesteps[k].reshape(1).repeat(SHAPE[0])
    expected = s.alphas[k] * x0 + s.betas[k] * noise  # alpha^2 + beta^2 = 1 on the angular schedule
    torch.testing.assert_close(s.add_noise(x0, noise, t), expected)
    # The model is a v-prediction network (v-diffusion): the exact v brings the loop back to x0.
    assert _exact_loop_from(s, k, x0, noise, "v_prediction") < 1e-4


def test_ipndm_add_noise_names_an_unknown_timestep():
    s = IPNDMScheduler()
    s.set_timesteps(5)
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        s.add_noise(torch.zeros(SHAPE), torch.zeros(SHAPE), torch.tensor([0.123, 0.123]))
    assert "exact_model_convergence" in IPNDMScheduler._known_contract_failures
