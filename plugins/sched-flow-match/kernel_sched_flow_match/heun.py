"""Heun (2nd-order) sampler for flow-matching models (Karras et al. 2022, Algorithm 2, on the
rectified-flow ODE).

Every step but the last evaluates the model twice: an Euler predictor to ``sigma_next`` and a
trapezoidal corrector that averages the two slopes.  The schedule therefore repeats each
interior timestep: ``len(timesteps) == 2 * n - 1``; ``step`` alternates predictor and
corrector and keeps the predictor's state in between.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.outputs import BaseOutput
from kernel.scheduling import randn_tensor
from kernel_sched_common import validate_num_inference_steps
from kernel_sched_flow_match.common import FlowMatchSchedulerBase, reject_integer_timestep, shift_sigmas


@dataclasses.dataclass
class FlowMatchHeunDiscreteSchedulerOutput(BaseOutput):
    """prev_sample: the sample at the next sigma (after the predictor, or after the corrector)."""

    prev_sample: torch.Tensor


class FlowMatchHeunDiscreteScheduler(FlowMatchSchedulerBase):
    """Heun's method on the flow-matching ODE; config keys as Diffusers'."""

    _compatibles = ()
    order = 2

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0) -> None:
        grid = torch.from_numpy(np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy())
        sigmas = shift_sigmas(grid / num_train_timesteps, shift)
        self._set_tables(sigmas * num_train_timesteps, sigmas)
        self.sigma_min = float(sigmas[-1])
        self.sigma_max = float(sigmas[0])
        self.num_inference_steps: int | None = None
        self._clear_predictor()
        self._reset_step_index()

    def _clear_predictor(self) -> None:
        self.prev_derivative = None
        self.dt = None
        self.sample = None

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is a predictor (first-order) step."""
        return self.dt is None

    def scale_noise(self, sample: torch.Tensor, timestep: Any, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``sigma * noise + (1 - sigma) * sample`` at the current step (initialising the index, as the reference)."""
        if noise is None:
            raise ValueError("scale_noise needs noise=<tensor shaped like sample>")
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = float(self._sigma_table[self._step_index])
        return sigma * noise + (1.0 - sigma) * sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """The forward process at each item's own timestep (``scale_noise`` above keeps the reference's
        current-step behaviour for parity; ``add_noise`` is ours and takes a batch of timesteps)."""
        return FlowMatchSchedulerBase.scale_noise(self, original_samples, timesteps, noise)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        n = validate_num_inference_steps(num_inference_steps)
        self.num_inference_steps = n
        N = self.config.num_train_timesteps
        ts = np.linspace(self._sigma_to_t(self.sigma_max), self._sigma_to_t(self.sigma_min), n)
        sigmas = torch.from_numpy(shift_sigmas(ts / N, self.config.shift)).to(torch.float32)
        timesteps = sigmas * N
        timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
        sigmas = torch.cat([sigmas, torch.zeros(1)])
        sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
        self._set_tables(timesteps.to(device) if device is not None else timesteps, sigmas)
        self._clear_predictor()
        self._reset_step_index()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> FlowMatchHeunDiscreteSchedulerOutput | tuple:
        """Predictor or corrector step; ``s_churn`` > 0 adds EDM churn noise (Karras et al. 2022, Alg. 2)."""
        self._require_timesteps()
        reject_integer_timestep(timestep, type(self).__name__)
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index + 1 >= len(self._sigma_table):
            raise ValueError(
                f"step called more often than the {len(self.timesteps)} scheduled timesteps; call set_timesteps again"
            )
        sample = sample.to(torch.float32)
        table = self._sigma_table
        first = self.state_in_first_order
        i = self._step_index
        sigma, sigma_next = (table[i], table[i + 1]) if first else (table[i - 1], table[i])

        churn = min(s_churn / (len(table) - 1), math.sqrt(2.0) - 1) if s_tmin <= float(sigma) <= s_tmax else 0.0
        sigma_hat = sigma * np.float32(churn + 1)
        if churn > 0:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
            sample = sample + noise * s_noise * float((sigma_hat**2 - sigma**2) ** 0.5)

        if first:
            denoised = sample - model_output * float(sigma)
            derivative = (sample - denoised) / float(sigma_hat)
            self.prev_derivative, self.dt, self.sample = derivative, float(sigma_next - sigma_hat), sample
            dt = self.dt
        else:
            denoised = sample - model_output * float(sigma_next)
            derivative = 0.5 * (self.prev_derivative + (sample - denoised) / float(sigma_next))
            dt, sample = self.dt, self.sample
            self._clear_predictor()

        prev_sample = (sample + derivative * dt).to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return FlowMatchHeunDiscreteSchedulerOutput(prev_sample=prev_sample)
