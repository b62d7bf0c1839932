"""Euler's method on the probability-flow ODE in sigma space (Karras et al. 2022, Algorithm 1
without churn), for models trained on a discrete variance-preserving beta schedule.

State ``x = x0 + sigma * eps`` (the VP sample divided by ``sqrt(alpha_bar)``).  One step:
``d = (x - x0_hat) / sigma``, ``x' = x + (sigma' - sigma) * d``.  Sigmas are spaced with
Karras et al. eq. 5 (``use_karras_sigmas``) or evenly in log-sigma, and mapped back to
(fractional) training timesteps by log-sigma interpolation for the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerMixin, SchedulerOutputWithX0
from kernel_sched_common import (
    BeginIndexMixin,
    broadcast_to,
    check_choice,
    exponential_sigmas,
    karras_sigmas,
    make_betas,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    validate_num_inference_steps,
)


class SigmaEulerScheduler(BeginIndexMixin, SchedulerMixin):
    """Deterministic first-order sampler; ``len(timesteps) == num_inference_steps``.

    Each step looks its sigma up from the timestep value, so ``set_begin_index`` (which the
    Scheduler protocol requires, for image-to-image) is only stored.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = True,
    ) -> None:
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction", "sample"))
        betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self._train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)  # ascending in t
        self._log_sigmas = np.log(self._train_sigmas)
        self.num_inference_steps: int | None = None
        self.set_timesteps(num_train_timesteps)
        self.num_inference_steps = None

    def set_timesteps(self, num_inference_steps: int, device: Any = None, **_: Any) -> None:
        n = validate_num_inference_steps(num_inference_steps, self.config.num_train_timesteps)
        lo, hi = float(self._train_sigmas[0]), float(self._train_sigmas[-1])
        spacing = karras_sigmas if self.config.use_karras_sigmas else exponential_sigmas
        sigmas = spacing(lo, hi, n)
        self.timesteps = torch.from_numpy(sigma_to_t(sigmas, self._log_sigmas)).float()
        self.sigmas = torch.cat([torch.from_numpy(sigmas).float(), torch.zeros(1)])
        self.init_noise_sigma = float((sigmas[0] ** 2 + 1) ** 0.5)
        self.num_inference_steps = n
        self._begin_index = None

    # The schedule lives on the CPU, so looking a timestep up never syncs with an accelerator.
    def _sigma_at(self, timestep: Any) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(timestep, dtype=torch.float32).cpu().reshape(-1)
        idx = (self.timesteps[None, :] - t[:, None]).abs().argmin(dim=1)
        return self.sigmas[idx], self.sigmas[idx + 1]

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        sigma, _ = self._sigma_at(timestep)
        scale = broadcast_to((sigma**2 + 1) ** -0.5, sample).to(sample.device, sample.dtype)
        return sample * scale

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: Any = None,
             return_dict: bool = True) -> SchedulerOutputWithX0 | tuple:
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before step")
        sigma, sigma_next = (s.to(sample.device) for s in self._sigma_at(timestep))
        x, out = sample.float(), model_output.float()
        sigma_b, next_b = broadcast_to(sigma, x), broadcast_to(sigma_next, x)
        if self.config.prediction_type == "epsilon":
            x0 = x - sigma_b * out
        elif self.config.prediction_type == "v_prediction":
            x0 = out * (-sigma_b / (sigma_b**2 + 1) ** 0.5) + x / (sigma_b**2 + 1)
        else:
            x0 = out
        prev = x + (next_b - sigma_b) * ((x - x0) / sigma_b)
        prev, x0 = prev.to(sample.dtype), x0.to(sample.dtype)
        if not return_dict:
            return (prev, x0)
        return SchedulerOutputWithX0(prev_sample=prev, pred_original_sample=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        sigma, _ = self._sigma_at(timesteps)
        sigma = broadcast_to(sigma, original_samples).to(original_samples.device, original_samples.dtype)
        return original_samples + sigma * noise
