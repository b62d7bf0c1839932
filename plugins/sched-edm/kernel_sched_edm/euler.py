"""EDM Euler sampler with optional stochastic churn (Karras et al. 2022, Alg. 2)."""

from __future__ import annotations

import logging
import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerOutputWithX0, randn_tensor
from kernel_sched_common import validate_num_inference_steps

from .preconditioning import EDMPreconditioning

logger = logging.getLogger(__name__)

EDMEulerSchedulerOutput = SchedulerOutputWithX0
"""``step`` output: ``prev_sample`` and the denoised ``pred_original_sample``."""


class EDMEulerScheduler(EDMPreconditioning):
    """First-order EDM sampler; ``s_churn > 0`` adds the "churn" noise of Alg. 2 (lines 4-6)."""

    _compatibles: tuple[str, ...] = ()
    order = 1
    _missing_timestep = "error"

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        sigma_schedule: str = "karras",
        num_train_timesteps: int = 1000,
        prediction_type: str = "epsilon",
        rho: float = 7.0,
        final_sigmas_type: str = "zero",
    ) -> None:
        self._check_edm_config()
        self.num_inference_steps = None
        ramp = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
        sigmas = self._sigmas_for(ramp).to(torch.float32)
        self._install_sigmas(sigmas, self._final_sigma(sigmas), None)
        self.is_scale_input_called = False

    def _final_sigma(self, sigmas: torch.Tensor) -> float:
        return float(sigmas[-1]) if self.config.final_sigmas_type == "sigma_min" else 0.0

    def set_timesteps(
        self,
        num_inference_steps: int = None,
        device: str | torch.device = None,
        sigmas: torch.Tensor | list[float] | None = None,
    ) -> None:
        """``num_inference_steps`` sigmas from the schedule, or the schedule at a custom ``sigmas`` ramp in [0, 1]."""
        if sigmas is None:
            n = validate_num_inference_steps(num_inference_steps)
            ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        else:
            ramp = torch.as_tensor(sigmas, dtype=torch.float64)
            if ramp.ndim > 1 or ramp.numel() == 0:
                raise ValueError("custom sigmas must be a non-empty 1-D ramp of values in [0, 1]")
            n = ramp.numel()
        self.num_inference_steps = num_inference_steps if sigmas is None else n
        grid = self._sigmas_for(ramp).to(torch.float32).reshape(-1)
        self._install_sigmas(grid, self._final_sigma(grid), device)

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
        pred_original_sample: torch.Tensor | None = None,
    ) -> SchedulerOutputWithX0 | tuple:
        """Euler step from ``sigma_hat`` (sigma raised by churn) to the next sigma."""
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError(
                "timestep must be one of scheduler.timesteps (a float), not an integer index from enumerate()"
            )
        if not self.is_scale_input_called:
            logger.warning("call scale_model_input before step: EDM models expect preconditioned inputs")
        if self.step_index is None:
            self._init_step_index(timestep)
        sample = sample.to(torch.float32)
        sigma = self.sigmas[self.step_index]
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator)
            sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        if pred_original_sample is None:
            pred_original_sample = self.precondition_outputs(sample, model_output, sigma_hat)
        derivative = (sample - pred_original_sample) / sigma_hat
        prev_sample = sample + derivative * (self.sigmas[self.step_index + 1] - sigma_hat)
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return EDMEulerSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
