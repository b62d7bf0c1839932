"""HeunDiscreteScheduler against the Diffusers oracle, bad input, swapping and sync-free loops."""

import inspect

import diffusers
import pytest
import torch

from kernel_contracts.testing import add_noise_parity, scheduler_parity
from kernel_sched_heun import HeunDiscreteScheduler

Ref = diffusers.HeunDiscreteScheduler
SHAPE = (1, 2, 4, 4)


def test_constructor_matches_diffusers():
    params = lambda cls: {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}  # noqa: E731
    assert params(HeunDiscreteScheduler) == params(Ref)
    assert set(HeunDiscreteScheduler._compatibles) == set(Ref._compatibles)
    assert HeunDiscreteScheduler.order == Ref.order == 2


CASES = [
    ({}, [1, 2, 7, 10, 25, 50]),
    ({"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, [2, 10]),
    ({"prediction_type": "sample", "clip_sample": True, "clip_sample_range": 0.8}, [7]),
    ({"timestep_spacing": "leading", "steps_offset": 1, "beta_schedule": "scaled_linear"}, [7, 25]),
    ({"use_karras_sigmas": True}, [1, 10]),
    ({"use_exponential_sigmas": True, "beta_schedule": "exp"}, [7]),
    ({"use_beta_sigmas": True, "beta_schedule": "squaredcos_cap_v2"}, [10]),
]


@pytest.mark.parametrize("config,steps", CASES, ids=str)
def test_parity(config, steps):
    for n in steps:
        ours, theirs = HeunDiscreteScheduler(**config), Ref(**config)
        assert scheduler_parity(ours, theirs, n, shape=SHAPE) == 2 * n - 1
        assert ours.state_in_first_order == theirs.state_in_first_order
    add_noise_parity(ours, theirs, shape=SHAPE)


def test_custom_timesteps_parity():
    ours, theirs = HeunDiscreteScheduler(), Ref()
    kwargs = {"timesteps": [999, 700, 450.5, 100]}
    assert scheduler_parity(ours, theirs, None, shape=SHAPE, set_timesteps_kwargs=kwargs) == 7
    add_noise_parity(ours, theirs, shape=SHAPE)


def test_begin_index_mid_schedule():
    ours, theirs = HeunDiscreteScheduler(), Ref()
    for s in (ours, theirs):
        s.set_timesteps(6)
        s.set_begin_index(3)
    x, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = theirs.timesteps[3:4]
    torch.testing.assert_close(ours.add_noise(x, noise, t), theirs.add_noise(x, noise, t))
    for s_ours, s_theirs in [(ours, theirs)]:
        for t in theirs.timesteps[3:]:
            a = s_ours.step(0.2 * x, t, s_ours.scale_model_input(x, t)).prev_sample
            b = s_theirs.step(0.2 * x, t, s_theirs.scale_model_input(x, t)).prev_sample
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "config,needle",
    [
        ({"beta_schedule": "laplace"}, "exp"),
        ({"timestep_spacing": "middle"}, "trailing"),
        ({"prediction_type": "noise"}, "v_prediction"),
        ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, "only one"),
    ],
)
def test_bad_config(config, needle):
    with pytest.raises(ValueError, match=needle):
        HeunDiscreteScheduler(**config)


def test_bad_set_timesteps():
    s = HeunDiscreteScheduler(num_train_timesteps=50)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        s.set_timesteps(51)
    with pytest.raises(ValueError, match="at least 1"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="descending"):
        s.set_timesteps(timesteps=[10, 20, 30])
    with pytest.raises(ValueError, match="not both"):
        s.set_timesteps(5, timesteps=[30, 20])
    with pytest.raises(ValueError, match="needs num_inference_steps"):
        s.set_timesteps()
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        HeunDiscreteScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[900, 10])


def test_swap_from_euler_config_matches_diffusers():
    source = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", use_karras_sigmas=True,
                  sigma_min=0.05, timestep_spacing="leading", steps_offset=1)
    ours = HeunDiscreteScheduler.from_config(diffusers.EulerDiscreteScheduler(**source).config)
    theirs = Ref.from_config(diffusers.EulerDiscreteScheduler(**source).config)
    scheduler_parity(ours, theirs, 7, shape=SHAPE)  # sigma_min kept from the Euler config bounds Karras, as in Diffusers
    assert diffusers.EulerDiscreteScheduler.from_config(ours.config).config.sigma_min == 0.05


def _loop(scheduler, device, steps=30):
    scheduler.set_timesteps(steps, device=device)
    x = torch.ones(SHAPE, device=device) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(0.1 * scheduler.scale_model_input(x, t), t, x).prev_sample
    return x


def test_loop_never_reads_device_tensors():
    assert _loop(HeunDiscreteScheduler(use_karras_sigmas=True), "meta").device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loop_has_no_sync():
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = _loop(HeunDiscreteScheduler(), "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(x.cpu(), _loop(HeunDiscreteScheduler(), "cpu"), atol=1e-4, rtol=1e-4)
