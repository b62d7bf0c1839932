"""Heun's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1, without churn).

Each inference step takes two model evaluations: an Euler predictor from ``sigma_i`` to
``sigma_{i+1}``, then a corrector that averages the slopes at both ends.  The schedule therefore
repeats every inner timestep: ``[t0, t1, t1, t2, t2, ...]`` (``2n - 1`` entries).
"""

from __future__ import annotations

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerOutputWithX0
from kernel_sched_common import KARRAS_COMPATIBLES, SigmaScheduler


class HeunDiscreteScheduler(SigmaScheduler):
    """Second-order Heun sampler; ``state_in_first_order`` tells which half of a step comes next."""

    _compatibles = KARRAS_COMPATIBLES
    order = 2

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._setup_sigma_tables(
            ("epsilon", "v_prediction", "sample"), accepted=("linear", "scaled_linear", "squaredcos_cap_v2", "exp")
        )
        self.use_karras_sigmas = use_karras_sigmas
        self.set_timesteps(num_train_timesteps, None, num_train_timesteps)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        num_train_timesteps: int | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Build ``n`` steps (``2n - 1`` model evaluations), or use custom descending ``timesteps``."""
        n = self._check_sigma_set_timesteps(num_inference_steps, timesteps)
        self.num_inference_steps = n
        steps, spaced, _ = self._spaced_sigmas(n, num_train_timesteps, timesteps)
        sigmas = torch.from_numpy(np.concatenate([spaced, [0.0]]).astype(np.float32))
        # sigma_0, then every inner sigma twice (predictor end = corrector start), then the final 0.
        sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
        steps = torch.from_numpy(np.asarray(steps))
        steps = torch.cat([steps[:1], steps[1:].repeat_interleave(2)]).to(torch.float32)
        self._publish(steps, sigmas, device)
        self._stash = None  # (slope, dt, sample) of the predictor half, None in first order

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is a predictor (Euler) half."""
        return self._stash is None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ):
        """Predictor half: Euler to ``sigma_next``.  Corrector half: redo the step with the mean slope."""
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        first = self._stash is None
        sigma, sigma_next = (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        x0 = self._x0_from_sigma(model_output, sample, sigma if first else sigma_next)
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        if first:
            slope = (sample - x0) / sigma
            dt = sigma_next - sigma
            self._stash = (slope, dt, sample)
        else:
            end_slope = (sample - x0) / sigma_next
            first_slope, dt, sample = self._stash
            slope = (first_slope + end_slope) / 2
            self._stash = None
        prev_sample = sample + slope * dt
        self._step_index = i + 1
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutputWithX0(prev_sample=prev_sample, pred_original_sample=x0)
