"""kernel_sched_common.schedules and .discrete vs Diffusers' scheduler math (the test-only oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers.schedulers import scheduling_ddim, scheduling_ddpm, scheduling_euler_discrete  # noqa: E402

from kernel_sched_common import (  # noqa: E402
    KARRAS_COMPATIBLES,
    AlphaTableMixin,
    betas_for_alpha_bar,
    beta_sigmas,
    broadcast_to,
    build_alpha_tables,
    check_choice,
    convert_sigmas,
    exponential_sigmas,
    float_spaced_timesteps,
    karras_sigmas,
    make_betas,
    rescale_zero_terminal_snr,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    spaced_timesteps,
    split_prediction,
    threshold_sample,
    validate_custom_schedule,
    validate_num_inference_steps,
)


@pytest.mark.parametrize("kind", ["cosine", "exp", "laplace"])
def test_betas_for_alpha_bar_match(kind):
    ref = scheduling_ddpm.betas_for_alpha_bar(1000, alpha_transform_type=kind)
    torch.testing.assert_close(betas_for_alpha_bar(1000, alpha_transform_type=kind), ref, atol=0, rtol=0)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_beta_tables_match_ddpm(schedule):
    ref = diffusers.DDPMScheduler(beta_schedule=schedule)
    betas = make_betas(1000, 0.0001, 0.02, schedule)
    torch.testing.assert_close(betas, ref.betas, atol=0, rtol=0)
    _, _, cumprod = build_alpha_tables(1000, 0.0001, 0.02, schedule, None)
    torch.testing.assert_close(cumprod, ref.alphas_cumprod, atol=0, rtol=0)


def test_trained_betas_and_unknown_schedule():
    assert make_betas(3, 0.1, 0.2, "linear", trained_betas=[0.1, 0.2, 0.3]).tolist() == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="beta_schedule='quadratic'.*linear"):
        make_betas(10, 0.1, 0.2, "quadratic")


def test_rescale_zero_terminal_snr_matches():
    betas = make_betas(1000, 0.00085, 0.012, "scaled_linear")
    ours = rescale_zero_terminal_snr(betas)
    torch.testing.assert_close(ours, scheduling_ddim.rescale_zero_terminal_snr(betas.clone()), atol=0, rtol=0)
    assert float(torch.cumprod(1 - ours, 0)[-1]) == 0.0  # zero SNR at the last step


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_timestep_spacings_match_diffusers(spacing, steps):
    ddim = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=1)
    ddim.set_timesteps(steps)
    assert spaced_timesteps(spacing, steps, 1000, steps_offset=1).tolist() == ddim.timesteps.tolist()
    euler = diffusers.EulerDiscreteScheduler(timestep_spacing=spacing, steps_offset=1)
    euler.set_timesteps(steps)
    train = sigmas_from_alphas_cumprod(euler.alphas_cumprod)
    ours_t = float_spaced_timesteps(spacing, steps, 1000, steps_offset=1)
    ours_sigmas = np.interp(ours_t, np.arange(1000), train)
    np.testing.assert_allclose(ours_sigmas, euler.sigmas[:-1].numpy(), rtol=1e-6)


def test_sigma_spacings_match_euler():
    ref = diffusers.EulerDiscreteScheduler()
    sigmas = torch.linspace(14.6, 0.03, 20)
    for ours, theirs in (
        (karras_sigmas(0.03, 14.6, 10), ref._convert_to_karras(sigmas, 10)),
        (exponential_sigmas(0.03, 14.6, 10), ref._convert_to_exponential(sigmas, 10)),
        (beta_sigmas(0.03, 14.6, 10), ref._convert_to_beta(sigmas, 10)),
    ):
        np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-6)
    np.testing.assert_allclose(convert_sigmas(sigmas, 10, use_karras_sigmas=True), karras_sigmas(0.03, 14.6, 10))
    np.testing.assert_array_equal(convert_sigmas(sigmas, 20), sigmas.numpy())
    with pytest.raises(ValueError, match="only one of"):
        convert_sigmas(sigmas, 10, use_karras_sigmas=True, use_beta_sigmas=True)


def test_sigma_to_t_matches_euler():
    ref = diffusers.EulerDiscreteScheduler()
    log_sigmas = np.log(sigmas_from_alphas_cumprod(ref.alphas_cumprod))
    query = np.array([14.0, 3.3, 0.5, 0.03, 0.01])
    np.testing.assert_allclose(sigma_to_t(query, log_sigmas), ref._sigma_to_t(query, log_sigmas), rtol=1e-6)


def test_threshold_sample_matches_ddpm():
    ref = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    x = 3 * torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(threshold_sample(x, 0.9, 1.5), ref._threshold_sample(x), atol=0, rtol=0)
    assert threshold_sample(x.half(), 0.9, 1.5).dtype == torch.float16


def test_split_prediction_inverts_the_forward_process():
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    a = torch.tensor(0.7)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    for kind, out in (("epsilon", eps), ("sample", x0), ("v_prediction", v)):
        got_x0, got_eps = split_prediction(kind, out, xt, a, 1 - a)
        torch.testing.assert_close(got_x0, x0)
        torch.testing.assert_close(got_eps, eps)
    with pytest.raises(ValueError, match="prediction_type"):
        split_prediction("flow_prediction", eps, xt, a, 1 - a)


def test_alpha_table_add_noise_matches_ddpm():
    class Tables(AlphaTableMixin):
        pass

    tables = Tables()
    tables.betas, tables.alphas, tables.alphas_cumprod = build_alpha_tables(1000, 0.0001, 0.02, "linear", None)
    ref = diffusers.DDPMScheduler()
    x0, noise, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([10, 900])
    torch.testing.assert_close(tables.add_noise(x0, noise, t), ref.add_noise(x0, noise, t))
    torch.testing.assert_close(tables.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t))


def test_karras_compatibles_are_diffusers_karras_schedulers():
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

    assert list(KARRAS_COMPATIBLES) == [k.name for k in KarrasDiffusionSchedulers]


def test_argument_checks_name_the_argument():
    with pytest.raises(ValueError, match=r"timestep_spacing='lead'.*Did you mean 'leading'"):
        check_choice("timestep_spacing", "lead", ("linspace", "leading", "trailing"))
    with pytest.raises(TypeError, match="num_inference_steps must be an int"):
        validate_num_inference_steps(2.0)
    with pytest.raises(ValueError, match="at least 1"):
        validate_num_inference_steps(0)
    with pytest.raises(ValueError, match="num_train_timesteps=10"):
        validate_num_inference_steps(11, 10)
    assert validate_num_inference_steps(np.int64(4), 10) == 4
    with pytest.raises(ValueError, match="not both"):
        validate_custom_schedule([3, 2], [1.0, 0.5])
    with pytest.raises(ValueError, match="strictly descending"):
        validate_custom_schedule([2, 3])


def test_broadcast_to():
    assert broadcast_to(torch.arange(3.0), torch.zeros(3, 2, 4, 4)).shape == (3, 1, 1, 1)
    assert broadcast_to(torch.tensor([[1.0], [2.0]]), torch.zeros(2, 5)).shape == (2, 1)
