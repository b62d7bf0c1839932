"""Euler-Maruyama sampling of the variance-preserving SDE (Song et al. 2021, eq. 11 and
Appendix B): ``dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw`` with ``beta`` linear in ``t`` from
``beta_min`` to ``beta_max``; the model predicts the noise, turned into a score by dividing by
the marginal std ``sqrt(1 - exp(2 log_mean_coeff))``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerMixin, randn_tensor
from kernel_sched_common import BeginIndexMixin, validate_num_inference_steps
from kernel_sched_score_sde.ve import KNOWN_CONTRACT_FAILURES


def _per_item(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    values = values.flatten()
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


class ScoreSdeVpScheduler(BeginIndexMixin, SchedulerMixin):
    """VP-SDE reverse Euler-Maruyama sampler; config keys as Diffusers'."""

    order = 1
    _known_contract_failures = KNOWN_CONTRACT_FAILURES

    @register_to_config
    def __init__(
        self, num_train_timesteps: int = 2000, beta_min: float = 0.1, beta_max: float = 20, sampling_eps: float = 1e-3
    ) -> None:
        if not 0 < sampling_eps < 1:
            raise ValueError(f"sampling_eps must be in (0, 1), got {sampling_eps}")
        self.sigmas = None
        self.discrete_sigmas = None
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self.init_noise_sigma = 1.0

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Continuous timesteps from 1 down to ``sampling_eps``."""
        n = validate_num_inference_steps(num_inference_steps)
        self.num_inference_steps = n
        self._begin_index = None
        self.timesteps = torch.linspace(1, self.config.sampling_eps, n, device=device)

    def step_pred(self, score: torch.Tensor, x: torch.Tensor, t: torch.Tensor, generator=None):
        """One reverse step ``dt = -1/n``; returns ``(x, x_mean)`` (``x_mean`` has no fresh noise)."""
        if self.timesteps is None:
            raise RuntimeError("ScoreSdeVpScheduler.step_pred was called before set_timesteps; call set_timesteps first")
        cfg = self.config
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device) if not isinstance(t, torch.Tensor) else t
        span = cfg.beta_max - cfg.beta_min
        log_mean_coeff = -0.25 * t**2 * span - 0.5 * t * cfg.beta_min
        std = _per_item(torch.sqrt(1.0 - torch.exp(2.0 * log_mean_coeff)), score)
        score = -score / std
        dt = -1.0 / len(self.timesteps)
        beta_t = _per_item(cfg.beta_min + t * span, x)
        g = torch.sqrt(beta_t)
        drift = -0.5 * beta_t * x - g**2 * score
        x_mean = x + drift * dt
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x_mean + g * math.sqrt(-dt) * noise, x_mean

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """VP marginal at continuous ``t``: ``exp(lmc) x0 + sqrt(1 - exp(2 lmc)) noise``."""
        cfg = self.config
        t = timesteps.to(original_samples.device, original_samples.dtype)
        lmc = -0.25 * t**2 * (cfg.beta_max - cfg.beta_min) - 0.5 * t * cfg.beta_min
        mean = _per_item(torch.exp(lmc), original_samples)
        std = _per_item(torch.sqrt(1.0 - torch.exp(2.0 * lmc)), original_samples)
        return mean * original_samples + std * noise
