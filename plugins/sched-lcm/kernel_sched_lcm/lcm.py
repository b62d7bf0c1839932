"""Multistep latent consistency sampling (Luo et al. 2023, "Latent Consistency Models").

At each timestep the consistency function ``f(x, t) = c_skip(t) x + c_out(t) x0_theta(x, t)`` maps the
sample straight to a clean estimate (``denoised``); unless it is the last step, that estimate is
noised again to the next timestep with fresh Gaussian noise.  ``c_skip`` and ``c_out`` are the
boundary-condition scalings of Song et al. 2023 ("Consistency Models") evaluated at
``timestep * timestep_scaling``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.outputs import BaseOutput
from kernel.scheduling import randn_tensor
from kernel_sched_common import split_prediction
from kernel_sched_lcm.consistency import ConsistencyScheduleMixin


@dataclasses.dataclass
class LCMSchedulerOutput(BaseOutput):
    """``prev_sample``: the sample for the next timestep; ``denoised``: the consistency estimate of x0."""

    prev_sample: torch.Tensor
    denoised: torch.Tensor | None = None


class LCMScheduler(ConsistencyScheduleMixin):
    """Latent consistency model sampler (a few steps, e.g. 4, over the distillation schedule)."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: np.ndarray | list[float] | None = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._setup()

    def get_scalings_for_boundary_condition_discrete(self, timestep: int | torch.Tensor) -> tuple:
        """``(c_skip, c_out)`` at ``timestep * timestep_scaling``: 1 and 0 at t = 0, so ``f(x, 0) = x``."""
        scaled = torch.as_tensor(timestep) * self.config.timestep_scaling
        spread = scaled**2 + self.sigma_data**2
        return self.sigma_data**2 / spread, scaled / spread**0.5

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> LCMSchedulerOutput | tuple:
        """One consistency step: denoise to x0 with ``f``, then re-noise to the next timestep."""
        t, i = self._begin_step(timestep)
        following = self._following(i)
        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_next = self._alpha_bar(t if following is None else following)
        c_skip, c_out = self.get_scalings_for_boundary_condition_discrete(t)
        x0, _ = split_prediction(self.config.prediction_type, model_output, sample, alpha_bar, 1 - alpha_bar)
        x0 = self._clip(x0)
        denoised = c_out * x0 + c_skip * sample
        if i != self.num_inference_steps - 1:
            noise = randn_tensor(model_output.shape, generator, model_output.device, denoised.dtype)
            prev_sample = alpha_bar_next.sqrt() * denoised + (1 - alpha_bar_next).sqrt() * noise
        else:
            prev_sample = denoised
        self._step_index = i + 1
        if not return_dict:
            return prev_sample, denoised
        return LCMSchedulerOutput(prev_sample=prev_sample, denoised=denoised)
