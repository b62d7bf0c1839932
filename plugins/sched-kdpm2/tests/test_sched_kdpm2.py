"""KDPM2 / KDPM2-ancestral against the Diffusers oracle, bad input, swapping and sync-free loops."""

import inspect

import diffusers
import pytest
import torch

from kernel_contracts.testing import add_noise_parity, scheduler_parity
from kernel_sched_kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler

PAIRS = {
    "kdpm2": (KDPM2DiscreteScheduler, diffusers.KDPM2DiscreteScheduler),
    "ancestral": (KDPM2AncestralDiscreteScheduler, diffusers.KDPM2AncestralDiscreteScheduler),
}
SHAPE = (1, 2, 4, 4)


@pytest.mark.parametrize("name", PAIRS)
def test_constructor_matches_diffusers(name):
    ours, theirs = PAIRS[name]
    params = lambda cls: {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}  # noqa: E731
    assert params(ours) == params(theirs)
    assert set(ours._compatibles) == set(theirs._compatibles)
    assert ours.order == theirs.order == 2


CASES = [
    ({}, [1, 2, 7, 10, 25, 50]),
    ({"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, [2, 10]),
    ({"timestep_spacing": "leading", "steps_offset": 1, "beta_schedule": "scaled_linear"}, [7]),
    ({"use_karras_sigmas": True}, [1, 10, 25]),
    ({"use_exponential_sigmas": True}, [7]),
    ({"use_beta_sigmas": True}, [10]),
]


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("config,steps", CASES, ids=str)
def test_parity(name, config, steps):
    ours_cls, theirs_cls = PAIRS[name]
    for n in steps:
        ours, theirs = ours_cls(**config), theirs_cls(**config)
        assert scheduler_parity(ours, theirs, n, shape=SHAPE) == 2 * n - 1
        torch.testing.assert_close(ours.sigmas_interpol, theirs.sigmas_interpol.cpu(), equal_nan=True)
    add_noise_parity(ours, theirs, shape=SHAPE)


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize(
    "config,needle",
    [
        ({"beta_schedule": "exp"}, "squaredcos_cap_v2"),
        ({"timestep_spacing": "middle"}, "trailing"),
        ({"prediction_type": "sample"}, "v_prediction"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "only one"),
    ],
)
def test_bad_config(name, config, needle):
    with pytest.raises(ValueError, match=needle):
        PAIRS[name][0](**config)


@pytest.mark.parametrize("name", PAIRS)
def test_bad_step_counts(name):
    s = PAIRS[name][0](num_train_timesteps=40)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        s.set_timesteps(41)
    with pytest.raises(ValueError, match="at least 1"):
        s.set_timesteps(0)
    with pytest.raises(TypeError, match="num_inference_steps"):
        s.set_timesteps("10")


@pytest.mark.parametrize("name", PAIRS)
def test_swap_from_ddim_config_matches_diffusers(name):
    source = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    ours_cls, theirs_cls = PAIRS[name]
    ours = ours_cls.from_config(diffusers.DDIMScheduler(**source).config)
    theirs = theirs_cls.from_config(diffusers.DDIMScheduler(**source).config)
    scheduler_parity(ours, theirs, 7, shape=SHAPE)
    assert diffusers.DDIMScheduler.from_config(ours.config).config.set_alpha_to_one is False


def _loop(scheduler, device, steps=30):
    scheduler.set_timesteps(steps, device=device)
    x = torch.ones(SHAPE, device=device) * scheduler.init_noise_sigma
    kw = {}
    if device != "meta" and "generator" in inspect.signature(scheduler.step).parameters:
        kw["generator"] = torch.Generator(device=device).manual_seed(0)
    for t in scheduler.timesteps:
        x = scheduler.step(0.1 * scheduler.scale_model_input(x, t), t, x, **kw).prev_sample
    return x


@pytest.mark.parametrize("name", PAIRS)
def test_loop_never_reads_device_tensors(name):
    assert _loop(PAIRS[name][0](use_karras_sigmas=True), "meta").device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", PAIRS)
def test_cuda_loop_has_no_sync(name):
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = _loop(PAIRS[name][0](), "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()
