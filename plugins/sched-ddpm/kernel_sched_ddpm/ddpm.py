"""Denoising diffusion probabilistic models: ancestral sampling of the reverse process.

Ho et al. 2020 ("Denoising Diffusion Probabilistic Models"): the posterior
``q(x_{t-1} | x_t, x0)`` has mean ``c0 x0 + ct x_t`` (eq. 7) and variance
``beta~_t = (1 - a_{t-1}) / (1 - a_t) beta_t``.  The learned variances follow Nichol & Dhariwal
2021 (``learned_range`` interpolates ``log beta~_t`` and ``log beta_t``, eq. 15).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerMixin, SchedulerOutputWithX0, randn_tensor
from kernel_sched_common import (
    KARRAS_COMPATIBLES,
    AlphaTableMixin,
    StepIndexMixin,
    check_choice,
    spaced_timesteps,
    split_prediction,
    threshold_sample,
    validate_custom_schedule,
    validate_num_inference_steps,
)

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


class DDPMScheduler(StepIndexMixin, AlphaTableMixin, SchedulerMixin):
    """Ancestral DDPM sampler, usable at any subset of the training timesteps."""

    _compatibles = KARRAS_COMPATIBLES
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("prediction_type", prediction_type, ("epsilon", "sample", "v_prediction"))
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        self._build_alpha_tables(
            self.config, accepted=("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
        )
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
        self.variance_type = variance_type
        self.num_inference_steps = None
        self.custom_timesteps = False
        # Until set_timesteps: every training timestep, so training loops can step and add noise.
        self._set_schedule(np.arange(num_train_timesteps)[::-1].copy(), None)

    def _set_schedule(self, timesteps: np.ndarray, device: Any) -> None:
        self._schedule_host = timesteps.astype(np.int64)
        self.timesteps = torch.from_numpy(self._schedule_host.copy()).to(device)
        self._reset_step_index()

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """DDPM feeds the model the sample unchanged."""
        return sample

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Space ``num_inference_steps`` of the training timesteps, or use custom descending ``timesteps``."""
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("pass either num_inference_steps or timesteps to set_timesteps, not both")
        n_train = self.config.num_train_timesteps
        if timesteps is not None:
            validate_custom_schedule(timesteps)
            steps = np.asarray(timesteps, dtype=np.int64)
            if steps[0] >= n_train:
                raise ValueError(f"custom timesteps must be below num_train_timesteps={n_train}, got {int(steps[0])}")
            if steps[-1] < 0:
                raise ValueError(f"custom timesteps must be non-negative, got {int(steps[-1])}")
            self.custom_timesteps = True
            self.num_inference_steps = len(steps)
        else:
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps or timesteps")
            self.num_inference_steps = validate_num_inference_steps(num_inference_steps, n_train)
            self.custom_timesteps = False
            steps = spaced_timesteps(
                self.config.timestep_spacing, self.num_inference_steps, n_train, self.config.steps_offset
            )
        self._set_schedule(steps, device)

    def previous_timestep(self, timestep: Any) -> int:
        """The timestep after ``timestep`` in the schedule (``-1`` after the last one)."""
        value, position = self._locate(timestep)
        return self._following(value, position)

    def _following(self, value: int, position: int | None) -> int:
        if position is None:
            raise ValueError(f"timestep {value} is not one of the scheduler's timesteps")
        if position + 1 < len(self._schedule_host):
            return int(self._schedule_host[position + 1])
        return -1

    def _variance(self, t: int, prev_t: int, predicted_variance: torch.Tensor | None, variance_type: str):
        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_t = 1 - alpha_bar / alpha_bar_prev
        # Posterior variance beta~_t (Ho et al. eq. 7), floored because some variants take its log.
        posterior = torch.clamp((1 - alpha_bar_prev) / (1 - alpha_bar) * beta_t, min=1e-20)
        if variance_type == "fixed_small":
            return posterior
        if variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(posterior))
        if variance_type == "fixed_large":
            return beta_t
        if variance_type == "fixed_large_log":
            return torch.log(beta_t)
        if variance_type == "learned":
            return predicted_variance
        fraction = (predicted_variance + 1) / 2
        return fraction * torch.log(beta_t) + (1 - fraction) * torch.log(posterior)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """Sample ``x_{t-1}`` from the posterior given the model's ``x0`` estimate."""
        t, position = self._locate(timestep)
        t = int(t)
        if self.custom_timesteps or self.num_inference_steps:
            prev_t = self._following(t, position)
        else:
            prev_t = t - 1
        learned = self.variance_type in ("learned", "learned_range")
        if learned and model_output.shape[1] == sample.shape[1] * 2:
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        else:
            predicted_variance = None

        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_bar, beta_bar_prev = 1 - alpha_bar, 1 - alpha_bar_prev
        alpha_t = alpha_bar / alpha_bar_prev
        beta_t = 1 - alpha_t

        x0, _ = split_prediction(self.config.prediction_type, model_output, sample, alpha_bar, beta_bar)
        if self.config.thresholding:
            x0 = threshold_sample(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        elif self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)

        # Posterior mean, Ho et al. eq. 7.
        mean = (alpha_bar_prev**0.5 * beta_t) / beta_bar * x0 + alpha_t**0.5 * beta_bar_prev / beta_bar * sample
        if t > 0:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            variance = self._variance(t, prev_t, predicted_variance, self.variance_type)
            if self.variance_type == "fixed_small_log":
                mean = mean + variance * noise
            elif self.variance_type == "learned_range":
                mean = mean + torch.exp(0.5 * variance) * noise
            else:
                mean = mean + variance**0.5 * noise
        self._advance(position)
        if not return_dict:
            return mean, x0
        return SchedulerOutputWithX0(prev_sample=mean, pred_original_sample=x0)
