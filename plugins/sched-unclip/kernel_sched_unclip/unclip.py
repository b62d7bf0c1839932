"""DDPM ancestral sampling as used by unCLIP (Ramesh et al. 2022) and Karlo.

A cosine-beta DDPM (Nichol & Dhariwal 2021) that can skip steps: given the current and the
previous timestep, the posterior ``q(x_prev | x_t, x0)`` (Ho et al. 2020, eqs. 6-7) is
formed with the effective ``beta = 1 - alpha_bar_t / alpha_bar_prev`` of the jump.  The
variance is either the fixed posterior variance (``fixed_small_log``, clipped in log space)
or interpolated in log space between the posterior variance and ``beta`` by the model's
second output half (``learned_range``, improved DDPM eq. 15).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.outputs import BaseOutput
from kernel.scheduling import SchedulerMixin, randn_tensor
from kernel_sched_common import (
    BeginIndexMixin,
    betas_for_alpha_bar,
    broadcast_to,
    check_choice,
    host_int,
    validate_num_inference_steps,
)

VARIANCE_TYPES = ("fixed_small_log", "learned_range")
PREDICTION_TYPES = ("epsilon", "sample")


@dataclasses.dataclass
class UnCLIPSchedulerOutput(BaseOutput):
    """prev_sample: x at the previous timestep; pred_original_sample: the predicted x0."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class UnCLIPScheduler(BeginIndexMixin, SchedulerMixin):
    """DDPM with step skipping and unCLIP's variance options; config keys as Diffusers'.

    Each step is given its timestep (and previous timestep), so ``set_begin_index`` is only stored.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        variance_type: str = "fixed_small_log",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        prediction_type: str = "epsilon",
        beta_schedule: str = "squaredcos_cap_v2",
    ) -> None:
        check_choice("beta_schedule", beta_schedule, ("squaredcos_cap_v2",))
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        self.betas = betas_for_alpha_bar(num_train_timesteps)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())
        self.variance_type = variance_type

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """``n`` timesteps from ``N - 1`` down to 0, evenly spaced (both ends included)."""
        N = self.config.num_train_timesteps
        n = validate_num_inference_steps(num_inference_steps, N)
        if n < 2:
            raise ValueError("UnCLIPScheduler needs num_inference_steps >= 2 (the schedule spans N-1 down to 0)")
        self.num_inference_steps = n
        self._begin_index = None
        ratio = (N - 1) / (n - 1)
        steps = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64)
        self.timesteps = torch.from_numpy(steps).to(device)

    # ------------------------------------------------------------------ posterior
    def _jump(self, t: int, prev_t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """alpha_bar_t, alpha_bar_prev, and the jump's beta and alpha (the table's when it is one step)."""
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        if prev_t == t - 1:
            return a_t, a_prev, self.betas[t], self.alphas[t]
        beta = 1 - a_t / a_prev
        return a_t, a_prev, beta, 1 - beta

    def _get_variance(
        self,
        t: int,
        prev_timestep: int | None = None,
        predicted_variance: torch.Tensor | None = None,
        variance_type: str | None = None,
    ) -> torch.Tensor:
        """Std (``fixed_small_log``) or log-variance (``learned_range``) of ``q(x_prev | x_t, x0)``."""
        t = host_int(t)
        prev_t = t - 1 if prev_timestep is None else host_int(prev_timestep)
        a_t, a_prev, beta, _ = self._jump(t, prev_t)
        posterior_var = (1 - a_prev) / (1 - a_t) * beta
        kind = variance_type or self.config.variance_type
        if kind == "fixed_small_log":
            return torch.exp(0.5 * torch.log(torch.clamp(posterior_var, min=1e-20)))
        if predicted_variance is None:
            raise ValueError("variance_type='learned_range' needs the model's predicted variance")
        frac = (predicted_variance + 1) / 2
        return frac * beta.log() + (1 - frac) * posterior_var.log()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        prev_timestep: int | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> UnCLIPSchedulerOutput | tuple:
        """One ancestral step from ``timestep`` to ``prev_timestep`` (default ``timestep - 1``)."""
        t = host_int(timestep)
        if not 0 <= t < self.config.num_train_timesteps:
            raise ValueError(f"timestep={t} is outside [0, {self.config.num_train_timesteps})")
        prev_t = t - 1 if prev_timestep is None else host_int(prev_timestep)
        if prev_t >= t:
            raise ValueError(f"prev_timestep={prev_t} must be smaller than timestep={t}")
        learned = self.variance_type == "learned_range"
        predicted_variance = None
        if learned and model_output.shape[1] == sample.shape[1] * 2:
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)

        a_t, a_prev, beta, alpha = self._jump(t, prev_t)
        b_t, b_prev = 1 - a_t, 1 - a_prev
        if self.config.prediction_type == "epsilon":
            x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
        else:
            x0 = model_output
        if self.config.clip_sample:
            r = self.config.clip_sample_range
            x0 = torch.clamp(x0, -r, r)

        # Posterior mean (Ho et al. 2020, eq. 7) with the jump's beta and alpha.
        coef_x0 = float(a_prev**0.5 * beta / b_t)
        coef_xt = float(alpha**0.5 * b_prev / b_t)
        prev_sample = coef_x0 * x0 + coef_xt * sample

        if t > 0:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
            spread = self._get_variance(t, prev_timestep=prev_t, predicted_variance=predicted_variance)
            if learned:
                spread = (0.5 * spread).exp()
            elif spread.ndim == 0:
                spread = float(spread)
            prev_sample = prev_sample + spread * noise

        if not return_dict:
            return (prev_sample, x0)
        return UnCLIPSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise`` (Ho et al. 2020, eq. 4)."""
        table = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
        a = table[timesteps.to(original_samples.device)]
        return broadcast_to(a**0.5, original_samples) * original_samples + broadcast_to(
            (1 - a) ** 0.5, original_samples
        ) * noise
