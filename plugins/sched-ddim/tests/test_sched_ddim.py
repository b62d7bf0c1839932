"""DDIM / DDIM-inverse against the Diffusers oracle, bad input, swapping and sync-free loops."""

import inspect

import diffusers
import pytest
import torch

from kernel_contracts.testing import add_noise_parity, scheduler_parity
from kernel_sched_ddim import DDIMInverseScheduler, DDIMScheduler

SHAPE = (2, 2, 4, 4)


@pytest.mark.parametrize("ours,theirs", [(DDIMScheduler, diffusers.DDIMScheduler),
                                         (DDIMInverseScheduler, diffusers.DDIMInverseScheduler)])
def test_constructor_matches_diffusers(ours, theirs):
    params = lambda cls: {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}  # noqa: E731
    assert params(ours) == params(theirs)
    assert set(ours._compatibles) == set(theirs._compatibles)


CASES = [
    ({}, [1, 2, 7, 10, 25, 50], {}),
    ({"prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True}, [2, 10], {}),
    ({"prediction_type": "sample", "timestep_spacing": "linspace", "set_alpha_to_one": False}, [7, 25], {}),
    ({"thresholding": True, "sample_max_value": 2.0}, [10], {}),
    ({"beta_schedule": "scaled_linear", "clip_sample": False, "steps_offset": 1}, [7, 50], {"eta": 0.7}),
    ({"beta_schedule": "squaredcos_cap_v2", "clip_sample_range": 0.6}, [10], {"eta": 1.0, "use_clipped_model_output": True}),
]


@pytest.mark.parametrize("config,steps,step_kwargs", CASES, ids=lambda v: str(v)[:60])
def test_ddim_parity(config, steps, step_kwargs):
    for n in steps:
        ours, theirs = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
        assert scheduler_parity(ours, theirs, n, shape=SHAPE, step_kwargs=step_kwargs) == n
    add_noise_parity(ours, theirs, shape=SHAPE)
    x, noise, t = torch.randn(SHAPE), torch.randn(SHAPE), torch.tensor([5, 900])
    torch.testing.assert_close(ours.get_velocity(x, noise, t), theirs.get_velocity(x, noise, t))


def test_ddim_variance_noise_parity():
    ours, theirs = DDIMScheduler(), diffusers.DDIMScheduler()
    for s in (ours, theirs):
        s.set_timesteps(10)
    x, out, z = torch.randn(SHAPE), torch.randn(SHAPE), torch.randn(SHAPE)
    t = theirs.timesteps[3]
    a = ours.step(out, t, x, eta=0.5, variance_noise=z).prev_sample
    b = theirs.step(out, t, x, eta=0.5, variance_noise=z).prev_sample
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "config",
    [{}, {"timestep_spacing": "trailing", "prediction_type": "v_prediction"},
     {"set_alpha_to_one": False, "prediction_type": "sample", "clip_sample": False, "steps_offset": 1}],
    ids=str,
)
@pytest.mark.parametrize("n", [1, 7, 25])
def test_inverse_parity(config, n):
    ours, theirs = DDIMInverseScheduler(**config), diffusers.DDIMInverseScheduler(**config)
    assert scheduler_parity(ours, theirs, n, shape=SHAPE) == n


def test_inverse_accepts_the_old_set_alpha_to_zero_key():
    ours = DDIMInverseScheduler(set_alpha_to_zero=False)
    assert float(ours.initial_alpha_cumprod) == float(ours.alphas_cumprod[0])
    with pytest.raises(TypeError, match="unexpected"):
        DDIMInverseScheduler(bogus=1)


@pytest.mark.parametrize("cls", [DDIMScheduler, DDIMInverseScheduler])
def test_bad_input(cls):
    with pytest.raises(ValueError, match="squaredcos_cap_v2"):
        cls(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="trailing"):
        cls(timestep_spacing="middle")
    with pytest.raises(ValueError, match="v_prediction"):
        cls(prediction_type="flow")
    s = cls(num_train_timesteps=100)
    x = torch.randn(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, 50, x)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        s.set_timesteps(101)
    with pytest.raises(ValueError, match="at least 1"):
        s.set_timesteps(0)


def test_ddim_rejects_both_noise_sources():
    s = DDIMScheduler()
    s.set_timesteps(5)
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="not both"):
        s.step(x, s.timesteps[0], x, eta=1.0, generator=torch.Generator(), variance_noise=x)


def test_swap_from_euler_config_matches_diffusers():
    source = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
                  timestep_spacing="trailing", rescale_betas_zero_snr=True)
    ours = DDIMScheduler.from_config(diffusers.EulerDiscreteScheduler(**source).config)
    theirs = diffusers.DDIMScheduler.from_config(diffusers.EulerDiscreteScheduler(**source).config)
    scheduler_parity(ours, theirs, 10, shape=SHAPE)
    inverse = DDIMInverseScheduler.from_config(DDIMScheduler(thresholding=True, clip_sample=False).config)
    inverse.set_timesteps(4)
    x = torch.randn(SHAPE) * 5
    out = inverse.step(torch.zeros(SHAPE), inverse.timesteps[0], x).prev_sample  # thresholding is not applied
    ref = diffusers.DDIMInverseScheduler(clip_sample=False)
    ref.set_timesteps(4)
    torch.testing.assert_close(out, ref.step(torch.zeros(SHAPE), ref.timesteps[0], x).prev_sample)


def _loop(scheduler, device, steps=30):
    scheduler.set_timesteps(steps, device=device)
    x = torch.ones(SHAPE, device=device)
    for t in scheduler.timesteps:
        x = scheduler.step(0.1 * scheduler.scale_model_input(x, t), t, x).prev_sample
    return x


@pytest.mark.parametrize("cls", [DDIMScheduler, DDIMInverseScheduler])
def test_loop_never_reads_device_tensors(cls):
    assert _loop(cls(), "meta").device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", [DDIMScheduler, DDIMInverseScheduler])
def test_cuda_loop_has_no_sync(cls):
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = _loop(cls(), "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(x.cpu(), _loop(cls(), "cpu"), atol=1e-4, rtol=1e-4)
