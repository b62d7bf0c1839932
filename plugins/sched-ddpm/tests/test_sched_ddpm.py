"""DDPMScheduler against the Diffusers oracle, bad input, swapping and sync-free loops."""

import inspect

import diffusers
import pytest
import torch

from kernel_contracts.testing import add_noise_parity, scheduler_parity
from kernel_sched_ddpm import DDPMScheduler

Ref = diffusers.DDPMScheduler
SHAPE = (2, 2, 4, 4)


def test_constructor_matches_diffusers():
    params = lambda cls: {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}  # noqa: E731
    assert params(DDPMScheduler) == params(Ref)
    assert set(DDPMScheduler._compatibles) == set(Ref._compatibles)


CASES = [
    ({}, [1, 2, 7, 10, 25, 50]),
    ({"prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True}, [2, 10]),
    ({"prediction_type": "sample", "timestep_spacing": "linspace", "clip_sample": False}, [7, 25]),
    ({"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9}, [10]),
    ({"beta_schedule": "squaredcos_cap_v2", "variance_type": "fixed_large", "steps_offset": 1}, [7]),
    ({"beta_schedule": "sigmoid", "variance_type": "fixed_small_log"}, [10]),
    ({"beta_schedule": "laplace"}, [7]),
    ({"beta_schedule": "scaled_linear", "clip_sample_range": 0.5}, [25]),
    ({"trained_betas": torch.linspace(1e-4, 0.03, 100).tolist(), "num_train_timesteps": 100}, [7, 50]),
]


@pytest.mark.parametrize("config,steps", CASES, ids=lambda v: str(v)[:60])
def test_parity(config, steps):
    for n in steps:
        ours, theirs = DDPMScheduler(**config), Ref(**config)
        assert scheduler_parity(ours, theirs, n, shape=SHAPE) == n
    add_noise_parity(ours, theirs, shape=SHAPE)


def test_learned_range_parity():
    ours, theirs = DDPMScheduler(variance_type="learned_range"), Ref(variance_type="learned_range")

    def model(x, t, i):  # 2C channels: mean prediction and variance interpolation in [-1, 1]
        return torch.cat([0.3 * x, torch.tanh(x + i)], dim=1)

    scheduler_parity(ours, theirs, 10, shape=SHAPE, model=model)


def test_custom_timesteps_parity():
    ours, theirs = DDPMScheduler(), Ref()
    kwargs = {"timesteps": [999, 640, 300, 31, 0]}
    assert scheduler_parity(ours, theirs, None, shape=SHAPE, set_timesteps_kwargs=kwargs) == 5
    add_noise_parity(ours, theirs, shape=SHAPE)


def test_step_without_set_timesteps_walks_the_training_schedule_like_diffusers():
    ours, theirs = DDPMScheduler(num_train_timesteps=20), Ref(num_train_timesteps=20)
    x = torch.randn(SHAPE)
    for t in (19, 7, 0):
        a = ours.step(0.1 * x, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        b = theirs.step(0.1 * x, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(a, b)


def test_velocity_parity():
    ours, theirs = DDPMScheduler(beta_schedule="scaled_linear"), Ref(beta_schedule="scaled_linear")
    x, noise, t = torch.randn(SHAPE), torch.randn(SHAPE), torch.tensor([3, 870])
    torch.testing.assert_close(ours.get_velocity(x, noise, t), theirs.get_velocity(x, noise, t))


@pytest.mark.parametrize(
    "config,needle",
    [
        ({"beta_schedule": "cosine"}, "squaredcos_cap_v2"),
        ({"timestep_spacing": "middle"}, "trailing"),
        ({"prediction_type": "noise"}, "v_prediction"),
        ({"variance_type": "small"}, "fixed_small_log"),
    ],
)
def test_bad_config(config, needle):
    with pytest.raises(ValueError, match=needle):
        DDPMScheduler(**config)


def test_bad_set_timesteps():
    s = DDPMScheduler(num_train_timesteps=100)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        s.set_timesteps(101)
    with pytest.raises(ValueError, match="at least 1"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="descending"):
        s.set_timesteps(timesteps=[10, 50, 90])
    with pytest.raises(ValueError, match="not both"):
        s.set_timesteps(10, timesteps=[50, 10])
    with pytest.raises(ValueError, match="below num_train_timesteps"):
        s.set_timesteps(timesteps=[100, 50])
    s.set_timesteps(10)
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        s.step(x, 55, x)


def test_swap_from_euler_config_matches_diffusers():
    source = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
                  timestep_spacing="trailing", rescale_betas_zero_snr=True)
    ours = DDPMScheduler.from_config(diffusers.EulerDiscreteScheduler(**source).config)
    theirs = Ref.from_config(diffusers.EulerDiscreteScheduler(**source).config)
    scheduler_parity(ours, theirs, 10, shape=SHAPE)


def _loop(scheduler, device, steps=30):
    scheduler.set_timesteps(steps, device=device)
    x = torch.ones(SHAPE, device=device)
    g = torch.Generator(device=device).manual_seed(0) if device != "meta" else None
    for t in scheduler.timesteps:
        x = scheduler.step(0.1 * scheduler.scale_model_input(x, t), t, x, generator=g).prev_sample
    return x


def test_loop_never_reads_device_tensors():
    assert _loop(DDPMScheduler(), "meta").device.type == "meta"


def test_device_timesteps_follow_begin_index():
    ours, theirs = DDPMScheduler(), Ref()
    ours.set_timesteps(10, device="meta")
    theirs.set_timesteps(10)
    ours.set_begin_index(4)
    assert ours.previous_timestep(ours.timesteps[4]) == int(theirs.previous_timestep(theirs.timesteps[4]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loop_has_no_sync():
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = _loop(DDPMScheduler(), "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()
