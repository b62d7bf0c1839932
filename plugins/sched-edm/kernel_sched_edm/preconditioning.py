"""EDM preconditioning and sigma schedules (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Table 1 and eq. 5 / eq. 7).

The network sees ``c_in(sigma) x`` and ``c_noise(sigma)``; its output ``F`` becomes the denoised
estimate ``D = c_skip x + c_out F`` with ``c_skip = sd^2 / (sigma^2 + sd^2)``,
``c_out = sigma sd / sqrt(sigma^2 + sd^2)`` (negated for v-prediction), ``c_in = 1 / sqrt(sigma^2 + sd^2)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from kernel.scheduling import SchedulerMixin
from kernel_sched_common import MirroredTimestepsMixin, broadcast_to, check_choice

SIGMA_SCHEDULES = ("karras", "exponential")


class EDMPreconditioning(MirroredTimestepsMixin, SchedulerMixin):
    """Shared by the EDM-style (variance-exploding, ``x = x0 + sigma eps``) schedulers."""

    _missing_timestep = "last"
    _prediction_types = ("epsilon", "v_prediction")

    def _check_edm_config(self) -> None:
        check_choice("sigma_schedule", self.config.sigma_schedule, SIGMA_SCHEDULES)
        check_choice("prediction_type", self.config.prediction_type, self._prediction_types)
        check_choice("final_sigmas_type", self.config.final_sigmas_type, ("zero", "sigma_min"))
        if not self.config.sigma_max > self.config.sigma_min > 0:
            raise ValueError(
                f"need sigma_max > sigma_min > 0, got sigma_min={self.config.sigma_min}, sigma_max={self.config.sigma_max}"
            )

    @property
    def init_noise_sigma(self) -> float:
        return (self.config.sigma_max**2 + 1) ** 0.5

    # ------------------------------------------------------------------ schedules
    def _compute_karras_sigmas(self, ramp: torch.Tensor, sigma_min: float | None = None, sigma_max: float | None = None) -> torch.Tensor:
        """Karras et al. 2022, eq. 5, evaluated on ``ramp`` in [0, 1]."""
        lo = sigma_min or self.config.sigma_min
        hi = sigma_max or self.config.sigma_max
        rho = self.config.rho
        lo_inv, hi_inv = lo ** (1 / rho), hi ** (1 / rho)
        return (hi_inv + ramp * (lo_inv - hi_inv)) ** rho

    def _compute_exponential_sigmas(self, ramp: torch.Tensor, sigma_min: float | None = None, sigma_max: float | None = None) -> torch.Tensor:
        """Geometric spacing from ``sigma_max`` down to ``sigma_min`` with ``len(ramp)`` points."""
        lo = sigma_min or self.config.sigma_min
        hi = sigma_max or self.config.sigma_max
        return torch.linspace(math.log(lo), math.log(hi), len(ramp)).exp().flip(0)

    def _sigmas_for(self, ramp: torch.Tensor) -> torch.Tensor:
        if self.config.sigma_schedule == "karras":
            return self._compute_karras_sigmas(ramp)
        return self._compute_exponential_sigmas(ramp)

    # ------------------------------------------------------------------ preconditioning
    def _get_conditioning_c_in(self, sigma: float | torch.Tensor) -> float | torch.Tensor:
        return 1 / (sigma**2 + self.config.sigma_data**2) ** 0.5

    def precondition_inputs(self, sample: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``c_in(sigma) * sample``."""
        return sample * self._get_conditioning_c_in(sigma)

    def precondition_noise(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """``c_noise(sigma) = log(sigma) / 4``: the network's time input."""
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.tensor([sigma])
        return 0.25 * torch.log(sigma)

    def precondition_outputs(self, sample: torch.Tensor, model_output: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Denoised estimate ``c_skip * sample + c_out * model_output``."""
        sd = self.config.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        if self.config.prediction_type == "epsilon":
            c_out = sigma * sd / (sigma**2 + sd**2) ** 0.5
        elif self.config.prediction_type == "v_prediction":
            c_out = -sigma * sd / (sigma**2 + sd**2) ** 0.5
        else:
            raise ValueError(f"prediction_type={self.config.prediction_type!r} is not supported; accepted values: epsilon, v_prediction")
        return c_skip * sample + c_out * model_output

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """Precondition the sample for the network at the current sigma."""
        if self.step_index is None:
            self._init_step_index(timestep)
        self.is_scale_input_called = True
        return self.precondition_inputs(sample, self.sigmas[self.step_index])

    def _install_sigmas(self, sigmas: torch.Tensor, last: float | torch.Tensor, device: Any) -> None:
        """Grid ``sigmas`` (float32, host) plus the final one; timesteps ``c_noise(sigma)`` on ``device``."""
        sigmas = sigmas.to(torch.float32)
        timesteps = self.precondition_noise(sigmas)
        self._store_timesteps(timesteps, device)
        self.sigmas = torch.cat([sigmas, torch.full((1,), float(last), dtype=torch.float32)])
        self._step_index = None
        self._begin_index = None

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x0 + sigma * noise`` at the grid points of ``timesteps``."""
        indices = self._step_indices_for(timesteps)
        sigma = self.sigmas.to(dtype=original_samples.dtype)[indices].flatten()
        sigma = broadcast_to(sigma, original_samples).to(original_samples.device)
        return original_samples + noise * sigma
