"""Trajectory consistency distillation sampling (Zheng et al. 2024, "Trajectory Consistency
Distillation", strategic stochastic sampling).

From ``x_t`` the model's ``(x0, eps)`` estimates jump to an intermediate timestep
``s = floor((1 - gamma) * t_next)`` along the deterministic DDIM path (``pred_noised_sample``); then,
unless it is the last step, forward noise takes it back up to ``t_next``.  ``gamma`` (``eta`` here)
sets the stochasticity: 0 is deterministic DDIM-like, 1 is the LCM-like "jump to x0 and re-noise".
"""

from __future__ import annotations

import dataclasses
import math
from numbers import Real

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.outputs import BaseOutput
from kernel.scheduling import randn_tensor
from kernel_sched_common import split_prediction
from kernel_sched_lcm import ConsistencyScheduleMixin


@dataclasses.dataclass
class TCDSchedulerOutput(BaseOutput):
    """``prev_sample``: the sample for the next timestep; ``pred_noised_sample``: the estimate at ``s``."""

    prev_sample: torch.Tensor
    pred_noised_sample: torch.Tensor | None = None


class TCDScheduler(ConsistencyScheduleMixin):
    """Trajectory consistency distillation sampler with strategic stochastic sampling (``eta``)."""

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
    ) -> None:
        self._setup()

    def _origin_timesteps(self, original_steps: int, strength: float, original_given: bool) -> np.ndarray:
        """With an explicit ``original_inference_steps`` TCD draws from every training timestep.

        TCD is distilled over the whole trajectory, so passing ``original_inference_steps`` to
        ``set_timesteps`` switches the pool to all of ``0 .. num_train_timesteps * strength - 1``
        (it then only bounds ``num_inference_steps``); the config value keeps the LCM-style pool.
        """
        if original_given:
            return np.arange(int(self.config.num_train_timesteps * strength))
        return super()._origin_timesteps(original_steps, strength, original_given)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.3,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> TCDSchedulerOutput | tuple:
        """Jump to ``s = floor((1 - eta) t_next)`` along the DDIM path, then re-noise to ``t_next``."""
        if isinstance(eta, bool) or not isinstance(eta, Real) or not 0 <= eta <= 1:
            raise ValueError(f"eta (gamma in the TCD paper) must be a number in [0, 1], got {eta!r}")
        t, i = self._begin_step(timestep)
        following = self._following(i)
        t_next = 0 if following is None else following
        # floor((1 - eta) * t_next) rounded in float32, as a tensor timestep would be.
        t_s = int(math.floor(np.float32(1 - eta) * np.float32(t_next)))
        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_next = self._alpha_bar(t_next)
        alpha_bar_s = self.alphas_cumprod[t_s]
        x0, eps = split_prediction(self.config.prediction_type, model_output, sample, alpha_bar, 1 - alpha_bar)
        pred_noised_sample = alpha_bar_s.sqrt() * x0 + (1 - alpha_bar_s).sqrt() * eps
        if eta > 0 and i != self.num_inference_steps - 1:
            noise = randn_tensor(model_output.shape, generator, model_output.device, pred_noised_sample.dtype)
            ratio = alpha_bar_next / alpha_bar_s
            prev_sample = ratio.sqrt() * pred_noised_sample + (1 - ratio).sqrt() * noise
        else:
            prev_sample = pred_noised_sample
        self._step_index = i + 1
        if not return_dict:
            return prev_sample, pred_noised_sample
        return TCDSchedulerOutput(prev_sample=prev_sample, pred_noised_sample=pred_noised_sample)
