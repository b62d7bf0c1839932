"""TCDScheduler against the Diffusers oracle (same seeded noise), bad input, swapping, sync-free loops."""

import inspect

import diffusers
import numpy as np
import pytest
import torch

from kernel_contracts.testing import add_noise_parity, fake_model_output, scheduler_parity
from kernel_sched_tcd import TCDScheduler, TCDSchedulerOutput

SHAPE = (2, 2, 4, 4)


def test_constructor_matches_diffusers():
    params = lambda fn: {k: p.default for k, p in inspect.signature(fn).parameters.items()}  # noqa: E731
    assert params(TCDScheduler.__init__) == params(diffusers.TCDScheduler.__init__)
    assert params(TCDScheduler.set_timesteps) == params(diffusers.TCDScheduler.set_timesteps)
    assert params(TCDScheduler.step) == params(diffusers.TCDScheduler.step)
    assert set(TCDScheduler._compatibles) == set(diffusers.TCDScheduler._compatibles)
    assert TCDScheduler.order == diffusers.TCDScheduler.order
    assert list(TCDSchedulerOutput.__dataclass_fields__) == ["prev_sample", "pred_noised_sample"]


CASES = [
    ({}, [1, 2, 7, 10, 25, 50], {}, {}),
    ({}, [4, 10], {}, {"eta": 0.0}),
    ({}, [4, 7], {}, {"eta": 1.0}),
    ({"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "beta_schedule": "linear"}, [1, 4, 10],
     {}, {"eta": 0.7}),
    ({"prediction_type": "sample", "set_alpha_to_one": False}, [4, 7], {}, {}),
    ({"beta_schedule": "squaredcos_cap_v2", "original_inference_steps": 100}, [8, 25], {}, {"eta": 0.5}),
    ({"trained_betas": np.linspace(1e-4, 0.03, 100).tolist(), "num_train_timesteps": 100,
      "original_inference_steps": 20}, [4, 20], {}, {}),
    # An explicit original_inference_steps switches the pool to every training timestep.
    ({}, [4, 25], {"original_inference_steps": 25}, {}),
    ({}, [4, 10], {"original_inference_steps": 40, "strength": 0.6}, {"eta": 0.4}),
    ({}, [4, 10], {"strength": 0.5}, {}),
    ({}, [None], {"timesteps": [999, 759, 499, 259]}, {}),
    ({}, [None], {"timesteps": [999, 759, 499, 259], "strength": 0.5}, {"eta": 0.9}),
    ({"prediction_type": "v_prediction"}, [None], {"timesteps": [999, 600, 100]}, {"eta": 0.0}),
]


@pytest.mark.parametrize("config,steps,set_kwargs,step_kwargs", CASES, ids=lambda v: str(v)[:60])
def test_tcd_parity(config, steps, set_kwargs, step_kwargs):
    for n in steps:
        ours, theirs = TCDScheduler(**config), diffusers.TCDScheduler(**config)
        done = scheduler_parity(ours, theirs, n, shape=SHAPE, set_timesteps_kwargs=set_kwargs, step_kwargs=step_kwargs)
        assert done == len(theirs.timesteps) and ours.num_inference_steps == theirs.num_inference_steps
    add_noise_parity(ours, theirs, shape=SHAPE)
    x, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([5, ours.config.num_train_timesteps - 1])
    torch.testing.assert_close(ours.get_velocity(x, noise, t), theirs.get_velocity(x, noise, t))


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_pred_noised_sample_and_tuple_output_match_diffusers(eta):
    ours, theirs = TCDScheduler(), diffusers.TCDScheduler()
    for s in (ours, theirs):
        s.set_timesteps(5)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    a, b = x.clone(), x.clone()
    ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for i, t in enumerate(theirs.timesteps):
        out = fake_model_output(a, t, i)
        a, pa = ours.step(out, t, a, eta=eta, generator=ga, return_dict=False)
        b, pb = theirs.step(out, t, b, eta=eta, generator=gb, return_dict=False)
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=0)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(a, pa)  # the last step returns the estimate itself


def test_eta_rounding_matches_diffusers_at_awkward_values():
    # floor((1 - eta) * t) in float32: eta=0.3 and t=10 gives 6, not the float64 answer 7.
    for eta in (0.3, 0.7, 0.9):
        ours, theirs = TCDScheduler(), diffusers.TCDScheduler()
        kwargs = {"timesteps": [999, 500, 130, 10]}
        scheduler_parity(ours, theirs, None, shape=SHAPE, set_timesteps_kwargs=kwargs, step_kwargs={"eta": eta})


def test_begin_index_and_previous_timestep_match_diffusers():
    ours, theirs = TCDScheduler(), diffusers.TCDScheduler()
    for s in (ours, theirs):
        s.set_timesteps(6)
        s.set_begin_index(2)
    x = torch.randn(SHAPE)
    t = theirs.timesteps[2]
    a = ours.step(0.1 * x, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    b = theirs.step(0.1 * x, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    torch.testing.assert_close(a, b)
    assert ours.step_index == theirs.step_index == 3 and ours.begin_index == 2
    for t in theirs.timesteps:
        assert ours.previous_timestep(t) == int(theirs.previous_timestep(t))


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "config,needle",
    [
        ({"beta_schedule": "sigmoid"}, "squaredcos_cap_v2"),
        ({"timestep_spacing": "middle"}, "trailing"),
        ({"prediction_type": "flow"}, "v_prediction"),
    ],
)
def test_bad_config_names_accepted_values(config, needle):
    with pytest.raises(ValueError, match=needle):
        TCDScheduler(**config)


@pytest.mark.parametrize(
    "kwargs,error,needle",
    [
        ({}, ValueError, "exactly one"),
        ({"num_inference_steps": 0}, ValueError, "at least 1"),
        ({"num_inference_steps": 51}, ValueError, "original_inference_steps"),
        ({"num_inference_steps": 30, "original_inference_steps": 20}, ValueError, "original_inference_steps"),
        ({"num_inference_steps": 30, "strength": 0.5}, ValueError, "raise strength"),
        ({"num_inference_steps": 4, "strength": -0.5}, ValueError, "strength"),
        ({"timesteps": [499, 999]}, ValueError, "descending"),
        ({"timesteps": [1000, 499]}, ValueError, "below num_train_timesteps"),
    ],
)
def test_bad_set_timesteps(kwargs, error, needle):
    with pytest.raises(error, match=needle):
        TCDScheduler().set_timesteps(**kwargs)


def test_bad_step_input():
    s = TCDScheduler()
    x = torch.randn(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, 999, x)
    s.set_timesteps(4)
    for eta in (-0.1, 1.5, "0.3"):
        with pytest.raises(ValueError, match=r"eta .*\[0, 1\]"):
            s.step(x, s.timesteps[0], x, eta=eta)


# ---------------------------------------------------------------------------- swapping
def test_from_config_swap_from_lcm_and_ddim_matches_diffusers():
    source = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
                  original_inference_steps=40, timestep_scaling=5.0)
    ours = TCDScheduler.from_config(diffusers.LCMScheduler(**source).config)
    theirs = diffusers.TCDScheduler.from_config(diffusers.LCMScheduler(**source).config)
    assert dict(ours.config) == {k: v for k, v in theirs.config.items() if not k.startswith("_")}
    scheduler_parity(ours, theirs, 4, shape=SHAPE)
    ddim = dict(set_alpha_to_one=False, rescale_betas_zero_snr=True, prediction_type="v_prediction")
    ours = TCDScheduler.from_config(diffusers.DDIMScheduler(**ddim).config)
    theirs = diffusers.TCDScheduler.from_config(diffusers.DDIMScheduler(**ddim).config)
    scheduler_parity(ours, theirs, 4, shape=SHAPE)
    assert diffusers.LCMScheduler.from_config(ours.config).config.rescale_betas_zero_snr is True


# ---------------------------------------------------------------------------- no host sync
def _loop(scheduler, device, steps=6, eta=0.3):
    scheduler.set_timesteps(steps, device=device)
    g = torch.Generator(device=device).manual_seed(0) if device != "meta" else None
    x = torch.ones(SHAPE, device=device)
    for t in scheduler.timesteps:
        x = scheduler.step(0.1 * scheduler.scale_model_input(x, t), t, x, eta=eta, generator=g).prev_sample
    return x


@pytest.mark.parametrize("eta", [0.0, 0.3])
def test_loop_never_reads_device_tensors(eta):
    # Meta tensors have no data: any .item(), comparison or host copy in the loop raises.
    x = _loop(TCDScheduler(), "meta", eta=eta)
    assert x.device.type == "meta" and x.shape == SHAPE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loop_has_no_sync():
    torch.cuda.set_sync_debug_mode("error")
    try:
        stochastic = _loop(TCDScheduler(), "cuda")
        deterministic = _loop(TCDScheduler(), "cuda", eta=0.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(torch.isfinite(stochastic).all())
    torch.testing.assert_close(deterministic.cpu(), _loop(TCDScheduler(), "cpu", eta=0.0), atol=1e-4, rtol=1e-4)
