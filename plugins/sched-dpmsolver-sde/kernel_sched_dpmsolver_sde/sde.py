"""DPM-Solver SDE scheduler: the second-order stochastic sampler of k-diffusion
(``sample_dpmpp_sde``; Lu et al. 2022b, DPM-Solver++(2S) with ancestral noise).

Each step takes two model evaluations: a half step (in ``t = -log sigma``) to the midpoint
and a full step using the midpoint's prediction, each followed by ancestral noise from a
Brownian tree so that the stochastic path is consistent across step sizes.  ``timesteps``
interleave the grid points with the midpoints, hence ``order = 2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.outputs import BaseOutput
from kernel.scheduling import SchedulerMixin
from kernel_sched_common import (
    KARRAS_COMPATIBLES,
    MirroredTimestepsMixin,
    broadcast_to,
    check_choice,
    check_sigma_options,
    convert_sigmas,
    float_spaced_timesteps,
    make_betas,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    validate_num_inference_steps,
)

from .brownian import BrownianTreeNoiseSampler


@dataclass
class DPMSolverSDESchedulerOutput(BaseOutput):
    """``prev_sample`` and the denoised estimate ``pred_original_sample`` of one (half) step."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def _sigma_of(t: Any) -> Any:
    return (-t).exp() if isinstance(t, torch.Tensor) else np.exp(-t)


def _time_of(sigma: Any) -> Any:
    return -(sigma.log()) if isinstance(sigma, torch.Tensor) else -np.log(sigma)


class DPMSolverSDEScheduler(MirroredTimestepsMixin, SchedulerMixin):
    """Stochastic second-order DPM-Solver++ (2S) with Brownian-tree noise.

    ``noise_sampler_seed`` fixes the Brownian path; ``step`` takes no generator.
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 2
    _missing_timestep = "error"

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
        noise_sampler_seed: int | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        check_sigma_options(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction"))
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.set_timesteps(num_train_timesteps, None, num_train_timesteps)
        self.use_karras_sigmas = use_karras_sigmas
        self.noise_sampler = None
        self.noise_sampler_seed = noise_sampler_seed

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        top = self.sigmas.max()
        return top if self.config.timestep_spacing in ("linspace", "trailing") else (top**2 + 1) ** 0.5

    @property
    def state_in_first_order(self) -> bool:
        """True at grid points, False at the midpoint evaluation of a step."""
        return self.sample is None

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device = None, num_train_timesteps: int | None = None
    ) -> None:
        """Grid of ``num_inference_steps`` sigmas with their midpoints interleaved."""
        cfg = self.config
        n = validate_num_inference_steps(num_inference_steps)
        self.num_inference_steps = n
        n_train = num_train_timesteps or cfg.num_train_timesteps
        if cfg.timestep_spacing == "linspace":
            timesteps = np.linspace(0, n_train - 1, n, dtype=float)[::-1].copy()
        else:
            timesteps = float_spaced_timesteps(cfg.timestep_spacing, n, n_train, cfg.steps_offset).astype(float)
        train = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        log_train = np.log(train)
        sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas:
            sigmas = convert_sigmas(
                sigmas, n, use_karras_sigmas=cfg.use_karras_sigmas,
                use_exponential_sigmas=cfg.use_exponential_sigmas, use_beta_sigmas=cfg.use_beta_sigmas,
            )
            timesteps = np.array([sigma_to_t(s, log_train) for s in sigmas])
        # midpoints in t = -log(sigma) between consecutive grid sigmas
        t = _time_of(sigmas)
        mid_sigmas = _sigma_of(t[:-1] + np.diff(t) * 0.5)
        mid_timesteps = np.array([sigma_to_t(s, log_train) for s in mid_sigmas])

        grid = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.sigmas = torch.cat([grid[:1], grid[1:-1].repeat_interleave(2), grid[-1:]])
        ts = torch.from_numpy(timesteps)
        ts = torch.cat([ts[:1], ts[1:].repeat_interleave(2)])
        ts[1::2] = torch.from_numpy(mid_timesteps)
        if str(device).startswith("mps"):
            ts = ts.to(torch.float32)
        self._store_timesteps(ts, device)
        self.sample = None
        self.mid_point_sigma = None
        self._step_index = None
        self._begin_index = None
        self.noise_sampler = None

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """Divide by ``sqrt(sigma^2 + 1)`` at the grid point or the midpoint."""
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index] if self.state_in_first_order else self.mid_point_sigma
        return sample / (sigma**2 + 1) ** 0.5

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
        s_noise: float = 1.0,
    ) -> DPMSolverSDESchedulerOutput | tuple:
        """Half step to the midpoint (first call) or full step with the midpoint prediction (second)."""
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.noise_sampler is None:
            positive = self.sigmas[self.sigmas > 0]
            self.noise_sampler = BrownianTreeNoiseSampler(
                sample, positive.min().item(), self.sigmas.max().item(), self.noise_sampler_seed
            )
        first = self.state_in_first_order
        i = self.step_index
        sigma, sigma_next = (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        t, t_next = _time_of(sigma), _time_of(sigma_next)
        t_mid = t + (t_next - t) * 0.5
        sigma_in = sigma if first else _sigma_of(t_mid)
        if self.config.prediction_type == "epsilon":
            x0 = sample - sigma_in * model_output
        else:  # v_prediction
            x0 = model_output * (-sigma_in / (sigma_in**2 + 1) ** 0.5) + sample / (sigma_in**2 + 1)

        if sigma_next == 0:
            prev_sample = sample + (sample - x0) / sigma * (sigma_next - sigma)
        else:
            if first:
                t_next = t_mid
            else:
                sample = self.sample
            sigma_from, sigma_to = _sigma_of(t), _sigma_of(t_next)
            # ancestral split of the step (k-diffusion get_ancestral_step)
            sigma_up = min(sigma_to, (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
            sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
            t_down = _time_of(sigma_down)
            prev_sample = _sigma_of(t_down) / _sigma_of(t) * sample - (t - t_down).expm1() * x0
            prev_sample = prev_sample + self.noise_sampler(_sigma_of(t), _sigma_of(t_next)) * s_noise * sigma_up
            if first:
                self.sample, self.mid_point_sigma = sample, _sigma_of(t_next)
            else:
                self.sample, self.mid_point_sigma = None, None
        self._step_index += 1
        if not return_dict:
            return (prev_sample, x0)
        return DPMSolverSDESchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x0 + sigma * noise`` at the schedule points of ``timesteps``."""
        indices = self._step_indices_for(timesteps)
        sigma = self.sigmas.to(dtype=original_samples.dtype)[indices].flatten()
        return original_samples + noise * broadcast_to(sigma, original_samples).to(original_samples.device)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
