"""Stochastic 2nd-order sampler of Karras et al. 2022 ("Elucidating the Design Space of
Diffusion-Based Generative Models", Algorithm 2) for variance-exploding models.

Kept for compatibility with Diffusers' (deprecated) ``KarrasVeScheduler`` and its pipeline,
which drives the three pieces by hand:

1. ``add_noise_to_input``: churn, raising ``sigma`` to ``sigma_hat = (1 + gamma) sigma`` with fresh
   noise when ``s_min <= sigma <= s_max`` (gamma = min(s_churn / n, sqrt(2) - 1));
2. ``step``: an Euler step from ``sigma_hat`` to ``sigma_prev``;
3. ``step_correct``: the trapezoidal (Heun) correction when ``sigma_prev > 0``.

Note, for exact compatibility: ``schedule`` holds the reference's values
``sigma_max^2 (sigma_min^2 / sigma_max^2)^(i / (n - 1))``, i.e. a geometric ramp from
``sigma_max^2`` to ``sigma_min^2`` that the pipeline reads as sigmas; and the model output is
taken with the reference's sign convention (``x0 = sample_hat + sigma_hat * output``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.outputs import BaseOutput
from kernel.scheduling import SchedulerMixin, randn_tensor
from kernel_sched_common import BeginIndexMixin, validate_num_inference_steps


@dataclasses.dataclass
class KarrasVeOutput(BaseOutput):
    """prev_sample: x at sigma_prev; derivative: the Euler slope; pred_original_sample: predicted x0."""

    prev_sample: torch.Tensor
    derivative: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class KarrasVeScheduler(BeginIndexMixin, SchedulerMixin):
    """Karras et al. 2022 stochastic sampler (VE); config keys as Diffusers'.

    ``step`` takes its noise levels as arguments, so ``set_begin_index`` is only stored.
    """

    order = 2

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.02,
        sigma_max: float = 100,
        s_noise: float = 1.007,
        s_churn: float = 80,
        s_min: float = 0.05,
        s_max: float = 50,
    ) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.init_noise_sigma = sigma_max
        self.num_inference_steps: int | None = None
        self.timesteps: torch.Tensor | None = None
        self.schedule: torch.Tensor | None = None

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        n = validate_num_inference_steps(num_inference_steps)
        if n < 2:
            raise ValueError("KarrasVeScheduler needs num_inference_steps >= 2 (the ramp spans sigma_max to sigma_min)")
        self.num_inference_steps = n
        self._begin_index = None
        self.timesteps = torch.from_numpy(np.arange(0, n)[::-1].copy()).to(device)
        cfg = self.config
        ratio = cfg.sigma_min**2 / cfg.sigma_max**2
        exponent = torch.arange(n - 1, -1, -1) / (n - 1)  # float32, as the reference computes it
        self.schedule = (cfg.sigma_max**2 * ratio**exponent).to(torch.float32).to(device)

    def add_noise_to_input(
        self, sample: torch.Tensor, sigma: float | torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Any]:
        """Churn: return ``sample + sqrt(sigma_hat^2 - sigma^2) * s_noise * eps`` and ``sigma_hat``."""
        self._require_timesteps()
        cfg = self.config
        level = float(sigma)  # decides the branch; the schedule lives on the host by default
        gamma = min(cfg.s_churn / self.num_inference_steps, math.sqrt(2) - 1) if cfg.s_min <= level <= cfg.s_max else 0
        eps = cfg.s_noise * randn_tensor(sample.shape, generator=generator, device=sample.device)
        sigma_hat = sigma + gamma * sigma
        return sample + ((sigma_hat**2 - sigma**2) ** 0.5 * eps), sigma_hat

    def step(
        self,
        model_output: torch.Tensor,
        sigma_hat: float | torch.Tensor,
        sigma_prev: float | torch.Tensor,
        sample_hat: torch.Tensor,
        return_dict: bool = True,
    ) -> KarrasVeOutput | tuple:
        """Euler step from ``sigma_hat`` to ``sigma_prev``."""
        x0 = sample_hat + sigma_hat * model_output
        slope = (sample_hat - x0) / sigma_hat
        prev_sample = sample_hat + (sigma_prev - sigma_hat) * slope
        if not return_dict:
            return (prev_sample, slope)
        return KarrasVeOutput(prev_sample=prev_sample, derivative=slope, pred_original_sample=x0)

    def step_correct(
        self,
        model_output: torch.Tensor,
        sigma_hat: float | torch.Tensor,
        sigma_prev: float | torch.Tensor,
        sample_hat: torch.Tensor,
        sample_prev: torch.Tensor,
        derivative: torch.Tensor,
        return_dict: bool = True,
    ) -> KarrasVeOutput | tuple:
        """Heun correction: redo the step with the mean of the slopes at ``sigma_hat`` and ``sigma_prev``."""
        x0 = sample_prev + sigma_prev * model_output
        slope_prev = (sample_prev - x0) / sigma_prev
        prev_sample = sample_hat + (sigma_prev - sigma_hat) * (0.5 * derivative + 0.5 * slope_prev)
        if not return_dict:
            return (prev_sample, derivative)
        return KarrasVeOutput(prev_sample=prev_sample, derivative=derivative, pred_original_sample=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        raise NotImplementedError("KarrasVeScheduler only samples (add_noise_to_input does the churn)")
