"""CogVideoX's DDIM: the DDIM sampler (Song et al., arXiv:2010.02502) on a signal-to-noise-shifted schedule.

CogVideoX divides the SNR of every training timestep by ``snr_shift_scale`` (3 by default; higher resolution
needs more noise, Hoogeboom et al., arXiv:2301.11093), ``a' = a / (s + (1 - s) a)``, before the optional
zero-terminal-SNR rescale (Lin et al., arXiv:2305.08891, applied here to ``alphas_cumprod``).  The step is
the deterministic DDIM step; like the reference it ignores ``eta`` and never clips ``x0``.
"""

from __future__ import annotations

import numpy as np
import torch

from kernel.config import register_to_config
from kernel_sched_common import KARRAS_COMPATIBLES
from kernel_sched_common.schedules import make_betas
from kernel_sched_ddim import DDIMScheduler


def shift_snr(alphas_cumprod: torch.Tensor, scale: float) -> torch.Tensor:
    """``alpha_bar`` whose SNR ``a / (1 - a)`` is divided by ``scale``."""
    return alphas_cumprod / (scale + (1 - scale) * alphas_cumprod)


def zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Shift and stretch ``sqrt(alpha_bar)`` so the last step has zero signal and the first is unchanged."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    return ((root - last) * first / (first - last)) ** 2


class CogVideoXDDIMScheduler(DDIMScheduler):
    """DDIM with CogVideoX's SNR shift (Diffusers' ``CogVideoXDDIMScheduler`` config keys)."""

    _compatibles = KARRAS_COMPATIBLES
    _known_contract_failures = {
        "exact_model_convergence": "as in the reference (and DDIMScheduler), a step goes to t - T // n, which is not the "
                                   "next timestep for timestep_spacing='linspace' (2 steps: 999 -> 499, next is 0)",
    }

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.0120,
        beta_schedule: str = "scaled_linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        snr_shift_scale: float = 3.0,
    ):
        self._setup(("leading", "trailing", "linspace"), descending=True)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def _build_alpha_tables(self, config, accepted=None) -> None:
        cfg = config
        if cfg.trained_betas is None and cfg.beta_schedule == "scaled_linear":
            # the reference builds this schedule in float64
            betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps,
                                   dtype=torch.float64) ** 2
        else:
            betas = make_betas(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.beta_schedule,
                               cfg.trained_betas)
        alphas = 1.0 - betas
        alphas_cumprod = shift_snr(torch.cumprod(alphas, dim=0), cfg.snr_shift_scale)
        if cfg.rescale_betas_zero_snr:
            alphas_cumprod = zero_terminal_snr(alphas_cumprod)
        self.betas, self.alphas, self.alphas_cumprod = betas, alphas, alphas_cumprod

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        return x0  # the reference never clips

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator=None, variance_noise=None, return_dict: bool = True):
        """Deterministic DDIM step from ``timestep`` to ``timestep - T // n`` (``eta`` is ignored, as in the reference)."""
        return super().step(model_output, timestep, sample, eta=0.0, return_dict=return_dict)
