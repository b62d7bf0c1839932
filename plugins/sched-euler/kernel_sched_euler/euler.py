"""Euler samplers over the sigma (variance-exploding) parametrisation.

* :class:`EulerDiscreteScheduler`: Karras et al. 2022 ("Elucidating the Design Space of
  Diffusion-Based Generative Models"), Algorithm 2, first-order branch, with optional stochastic
  churn (``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``).
* :class:`EulerAncestralDiscreteScheduler`: the ancestral variant from k-diffusion: each step goes
  down to ``sigma_down`` with Euler and adds fresh noise of scale ``sigma_up``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerOutputWithX0, randn_tensor
from kernel_sched_common import (
    KARRAS_COMPATIBLES,
    SigmaScheduler,
    as_host_array,
    check_choice,
    check_sigma_options,
    sigma_to_t,
)


def _reject_integer_timestep(timestep: Any, where: str) -> None:
    # An integer here is almost always a loop index from enumerate(), not a schedule entry.
    integer = isinstance(timestep, (int, np.integer)) and not isinstance(timestep, bool)
    if isinstance(timestep, torch.Tensor) and not timestep.is_floating_point():
        integer = True
    if integer:
        raise ValueError(
            f"{where} got an integer timestep; pass one of scheduler.timesteps (floats), not a loop index"
        )


def _output(prev_sample: torch.Tensor, x0: torch.Tensor, return_dict: bool):
    if not return_dict:
        return prev_sample, x0
    return SchedulerOutputWithX0(prev_sample=prev_sample, pred_original_sample=x0)


class EulerDiscreteScheduler(SigmaScheduler):
    """Euler method on the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma``."""

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
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ):
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction", "sample", "original_sample"))
        check_choice("interpolation_type", interpolation_type, ("linear", "log_linear"))
        check_choice("timestep_type", timestep_type, ("discrete", "continuous"))
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
        check_sigma_options(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        self._build_sigma_tables(self.config)
        self.use_karras_sigmas = use_karras_sigmas
        self.use_exponential_sigmas = use_exponential_sigmas
        self.use_beta_sigmas = use_beta_sigmas
        self.num_inference_steps = None
        self.is_scale_input_called = False

        # Before set_timesteps: the full training schedule, so add_noise and training loops work.
        sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).flip(0)
        if self._continuous_v():
            timesteps = 0.25 * sigmas.log()
        else:
            timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps)[::-1].copy()).float()
        self._publish(timesteps, torch.cat([sigmas, torch.zeros(1)]), None)

    def _continuous_v(self) -> bool:
        # Continuous-time v models (e.g. SD upscalers) take c_noise = log(sigma) / 4 (Karras et al., Table 1).
        return self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction"

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
    ) -> None:
        """Build the schedule from a step count, custom ``timesteps``, or custom ``sigmas`` (n + 1 values)."""
        if timesteps is not None and self._continuous_v():
            raise ValueError("custom timesteps cannot be used with timestep_type='continuous' and v_prediction")
        if sigmas is not None and len(sigmas) < 2:
            raise ValueError("custom sigmas need at least two values (the last is the final sigma)")
        n = self._check_sigma_set_timesteps(num_inference_steps, timesteps, sigmas)
        self.num_inference_steps = n
        if sigmas is not None:
            sigma_table = np.asarray(as_host_array(sigmas), dtype=np.float32)
            steps = sigma_to_t(sigma_table[:-1], np.log(self._train_sigmas()))
        else:
            steps, spaced, _ = self._spaced_sigmas(
                n, timesteps=timesteps, log_linear=self.config.interpolation_type == "log_linear"
            )
            if self.config.final_sigmas_type == "sigma_min":
                first = self.alphas_cumprod[0]
                last = float(((1 - first) / first) ** 0.5)
            else:
                last = 0.0
            sigma_table = np.concatenate([spaced, [last]]).astype(np.float32)
        sigma_tensor = torch.from_numpy(sigma_table).float()
        if self._continuous_v():
            timestep_tensor = 0.25 * sigma_tensor[:-1].log()
        else:
            timestep_tensor = torch.from_numpy(np.asarray(steps).astype(np.float32))
        self._publish(timestep_tensor, sigma_tensor, device)

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
    ):
        """One Euler step from ``sigmas[i]`` (raised to ``sigma_hat`` by churn) to ``sigmas[i + 1]``."""
        _reject_integer_timestep(timestep, "EulerDiscreteScheduler.step")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        sample = sample.to(torch.float32)
        sigma = self.sigmas[i]
        churn = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (churn + 1)
        if churn > 0:
            fresh = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype) * s_noise
            sample = sample + fresh * (sigma_hat**2 - sigma**2) ** 0.5
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0 = sample - sigma_hat * model_output
        elif kind == "v_prediction":
            x0 = self._x0_from_sigma(model_output, sample, sigma)
        else:
            x0 = model_output
        slope = (sample - x0) / sigma_hat
        prev_sample = (sample + slope * (self.sigmas[i + 1] - sigma_hat)).to(model_output.dtype)
        self._step_index = i + 1
        return _output(prev_sample, x0, return_dict)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``v = sqrt(a) eps - sqrt(1 - a) x0``.

        Matches Diffusers 0.42 exactly, which reads ``alphas_cumprod`` at each timestep's *position*
        in the inference schedule rather than at the timestep itself.
        """
        _reject_integer_timestep(timesteps, "EulerDiscreteScheduler.get_velocity")
        timesteps = torch.as_tensor(timesteps).reshape(-1)
        positions = [self.index_for_timestep(t) for t in timesteps.cpu()]
        table = self.alphas_cumprod.to(sample)[positions]
        signal = table.flatten() ** 0.5
        noise_level = (1 - table).flatten() ** 0.5
        shape = (-1,) + (1,) * (sample.ndim - 1)
        return signal.reshape(shape) * noise - noise_level.reshape(shape) * sample


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    """Ancestral Euler: deterministic step to ``sigma_down``, then noise of scale ``sigma_up``.

    ``sigma_up = sqrt(s_to^2 (s_from^2 - s_to^2) / s_from^2)`` and
    ``sigma_down = sqrt(s_to^2 - sigma_up^2)`` (k-diffusion ``get_ancestral_step`` with eta = 1).
    """

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
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._setup_sigma_tables(("epsilon", "v_prediction"))
        self.num_inference_steps = None
        self.is_scale_input_called = False
        sigmas = np.concatenate([self._train_sigmas()[::-1], [0.0]]).astype(np.float32)
        timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps)[::-1].copy())
        self._publish(timesteps, torch.from_numpy(sigmas), None)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Space ``num_inference_steps`` timesteps and interpolate their sigmas (final sigma 0)."""
        n = self._check_sigma_set_timesteps(num_inference_steps)
        self.num_inference_steps = n
        steps, spaced, _ = self._spaced_sigmas(n)
        sigmas = np.concatenate([spaced, [0.0]]).astype(np.float32)
        self._publish(torch.from_numpy(steps), torch.from_numpy(sigmas), device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """Euler to ``sigma_down`` plus ``sigma_up`` fresh noise."""
        _reject_integer_timestep(timestep, "EulerAncestralDiscreteScheduler.step")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        sigma_from, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        sample = sample.to(torch.float32)
        x0 = self._x0_from_sigma(model_output, sample, sigma_from)
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        slope = (sample - x0) / sigma_from
        prev_sample = sample + slope * (sigma_down - sigma_from)
        fresh = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        prev_sample = (prev_sample + fresh * sigma_up).to(model_output.dtype)
        self._step_index = i + 1
        return _output(prev_sample, x0, return_dict)
