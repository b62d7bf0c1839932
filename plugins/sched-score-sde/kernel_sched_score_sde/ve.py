"""Predictor-corrector sampling of the variance-exploding SDE (Song et al. 2021, Algorithm 2).

Continuous time runs from 1 down to ``sampling_eps``; ``sigma(t) = sigma_min (sigma_max /
sigma_min)^t``.  The model predicts the score ``grad log p``.

* ``step_pred``: reverse-diffusion predictor on the discrete ladder of noise levels
  (``discrete_sigmas``, geometric from ``sigma_min`` to ``sigma_max``), i.e. ancestral
  sampling of the SMLD chain: ``x <- x + (s_i^2 - s_{i-1}^2) score + sqrt(s_i^2 - s_{i-1}^2) z``;
* ``step_correct``: one Langevin corrector step with step size set from the target
  signal-to-noise ratio ``snr`` (Algorithm 4 of the paper).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.outputs import BaseOutput
from kernel.scheduling import SchedulerMixin, SchedulerOutput, randn_tensor
from kernel_sched_common import BeginIndexMixin, validate_num_inference_steps


@dataclasses.dataclass
class SdeVeOutput(BaseOutput):
    """prev_sample: the next sample; prev_sample_mean: the same without the final noise (the output at the end)."""

    prev_sample: torch.Tensor
    prev_sample_mean: torch.Tensor


def _per_item(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    values = values.flatten()
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


#: Why the generic scheduler loop (``step(model_output, t, sample)``) cannot drive a Score-SDE sampler.
PREDICTOR_CORRECTOR_API = (
    "predictor-corrector API (Song et al. 2021): step_pred/step_correct take the score and return (x, x_mean); "
    "there is no step(), so the generic denoising loop cannot run"
)
#: The contracts a Score-SDE sampler cannot satisfy, with the reason (read by kernel_contracts).
KNOWN_CONTRACT_FAILURES = {
    name: PREDICTOR_CORRECTOR_API
    for name in ("step_shape_dtype", "step_half_precision", "step_deterministic", "step_no_mutation", "begin_index",
                 "config_round_trip", "save_load_round_trip", "exact_model_convergence")
}


class ScoreSdeVeScheduler(BeginIndexMixin, SchedulerMixin):
    """VE-SDE predictor-corrector sampler; config keys as Diffusers'."""

    order = 1
    _known_contract_failures = {
        **KNOWN_CONTRACT_FAILURES,
        "add_noise": "add_noise takes integer rungs of the discrete sigma ladder (Diffusers' API), not the "
        "continuous timesteps in (0, 1] that set_timesteps gives",
    }

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 2000,
        snr: float = 0.15,
        sigma_min: float = 0.01,
        sigma_max: float = 1348.0,
        sampling_eps: float = 1e-5,
        correct_steps: int = 1,
    ) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        if not 0 < sampling_eps < 1:
            raise ValueError(f"sampling_eps must be in (0, 1), got {sampling_eps}")
        self.init_noise_sigma = sigma_max
        self.timesteps: torch.Tensor | None = None
        self.set_sigmas(num_train_timesteps, sigma_min, sigma_max, sampling_eps)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def set_timesteps(
        self, num_inference_steps: int, sampling_eps: float | None = None, device: str | torch.device | None = None
    ) -> None:
        """Continuous timesteps from 1 to ``sampling_eps`` (follow with ``set_sigmas``)."""
        n = validate_num_inference_steps(num_inference_steps)
        eps = self.config.sampling_eps if sampling_eps is None else sampling_eps
        self.num_inference_steps = n
        self._begin_index = None
        self.timesteps = torch.linspace(1, eps, n, device=device)
        self._timesteps_host = torch.linspace(1, eps, n).numpy()

    def set_sigmas(
        self,
        num_inference_steps: int,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        sampling_eps: float | None = None,
    ) -> None:
        """Noise levels: ``sigmas`` at the continuous timesteps and the geometric ``discrete_sigmas`` ladder."""
        n = validate_num_inference_steps(num_inference_steps)
        lo = self.config.sigma_min if sigma_min is None else sigma_min
        hi = self.config.sigma_max if sigma_max is None else sigma_max
        eps = self.config.sampling_eps if sampling_eps is None else sampling_eps
        if self.timesteps is None:
            self.set_timesteps(n, eps)
        ratio = hi / lo
        self.sigmas = torch.stack([lo * ratio**t for t in self.timesteps.cpu()])
        self.discrete_sigmas = torch.exp(torch.linspace(math.log(lo), math.log(hi), n))
        self._device_sigmas: dict[torch.device, torch.Tensor] = {}

    def _ladder_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._device_sigmas:
            self._device_sigmas[device] = self.discrete_sigmas.to(device)
        return self._device_sigmas[device]

    def get_adjacent_sigma(self, timesteps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The next-lower rung of the ladder (0 below the first rung)."""
        ladder = self._ladder_on(timesteps.device)
        return torch.where(timesteps == 0, torch.zeros_like(t.to(timesteps.device)), ladder[timesteps - 1])

    def _diffusion(self, timestep: Any, sample: torch.Tensor) -> tuple[Any, Any]:
        """``g = sqrt(s_i^2 - s_{i-1}^2)`` and ``g^2`` (float32) for the rung of ``timestep``.

        Python floats for a host scalar timestep (no device traffic), per-item tensors otherwise.
        """
        steps = len(self.timesteps) - 1
        if not isinstance(timestep, torch.Tensor) or (timestep.device.type == "cpu" and timestep.numel() == 1):
            rung = int(np.float32(float(timestep)) * np.float32(steps))  # truncation, as .long()
            if not 0 <= rung < len(self.discrete_sigmas):
                raise ValueError(f"timestep={float(timestep)} maps outside the noise ladder; pass one of scheduler.timesteps")
            s = self.discrete_sigmas[rung]
            below = self.discrete_sigmas[rung - 1] if rung > 0 else torch.tensor(0.0)
            g = (s**2 - below**2) ** 0.5
            return float(g), float(g**2)
        t = timestep * torch.ones(sample.shape[0], device=sample.device)
        rungs = (t * steps).long()
        ladder = self._ladder_on(sample.device)
        g = _per_item((ladder[rungs] ** 2 - self.get_adjacent_sigma(rungs, t) ** 2) ** 0.5, sample)
        return g, g**2

    def step_pred(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SdeVeOutput | tuple:
        """Reverse-diffusion predictor step (the score is ``model_output``)."""
        g, g2 = self._diffusion(timestep, sample)
        mean = sample + g2 * model_output  # minus the drift -g^2 * score over a negative dt
        noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        prev = mean + g * noise
        if not return_dict:
            return (prev, mean)
        return SdeVeOutput(prev_sample=prev, prev_sample_mean=mean)

    def step_correct(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Langevin corrector: ``eps = 2 (snr ||z|| / ||score||)^2``, ``x <- x + eps score + sqrt(2 eps) z``."""
        noise = randn_tensor(sample.shape, generator=generator, device=sample.device)
        grad_norm = torch.linalg.vector_norm(model_output.reshape(model_output.shape[0], -1), dim=-1).mean()
        noise_norm = torch.linalg.vector_norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
        step_size = (self.config.snr * noise_norm / grad_norm) ** 2 * 2
        prev = sample + step_size * model_output + (step_size * 2) ** 0.5 * noise
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor | None, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """``x0 + discrete_sigmas[timesteps] * noise`` (``timesteps`` are integer rungs of the ladder)."""
        sigmas = self._ladder_on(original_samples.device)[timesteps.to(original_samples.device)]
        if noise is None:
            noise = torch.randn_like(original_samples)
        return noise * _per_item(sigmas, original_samples) + original_samples
