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
from kernel.scheduling import SchedulerOutputWithX0, randn_tensor
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


class CogVideoXDPMScheduler(CogVideoXDDIMScheduler):
    """CogVideoX's second-order multistep DPM-Solver++ sampler (Lu et al., arXiv:2211.01095) on the same shifted
    schedule (Diffusers' ``CogVideoXDPMScheduler`` config keys and step signature).

    In log-SNR ``lambda = log sqrt(a / (1 - a))`` with ``h = lambda(t') - lambda(t)``, one step is
    ``x' = sqrt((1 - a') / (1 - a)) e^-h x + (1 - e^-2h) sqrt(a') D + sqrt(1 - a') sqrt(1 - e^-2h) z``: the
    stochastic (SDE) DPM-Solver++ update, so every step draws fresh noise ``z`` whatever ``eta``.  The first step
    uses ``D = x0``; later ones extrapolate with the previous step's ``x0`` (taken at ``timestep_back``),
    ``D = (1 + 1 / 2r) x0 - 1 / 2r x0_old``, ``r = h_old / h``, and draw the noise twice (the first draw
    unused), as the reference does; the last step (to ``t' < 0``) stays first order.  The caller carries
    ``x0`` from one step to the next: ``step`` returns ``(prev_sample, pred_original_sample)``.
    """

    _known_contract_failures = {
        name: "step(model_output, old_pred_original_sample, timestep, timestep_back, sample) is the reference's "
              "multistep signature, which the contract's step(model_output, timestep, sample) call cannot meet"
        for name in ("step_shape_dtype", "begin_index", "step_deterministic", "step_no_mutation",
                     "config_round_trip", "save_load_round_trip", "exact_model_convergence")
    }

    def step(self, model_output: torch.Tensor, old_pred_original_sample: torch.Tensor | None, timestep,
             timestep_back, sample: torch.Tensor, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator=None, variance_noise=None, return_dict: bool = False):
        """One step from ``timestep`` to ``timestep - T // n`` (``eta``, ``use_clipped_model_output`` and
        ``variance_noise`` are accepted and ignored, as in the reference)."""
        self._require_timesteps()
        t, position = self._locate(timestep)
        t = int(t)
        prev_t = t - self._stride()
        alpha = self.alphas_cumprod[t]
        alpha_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta = 1 - alpha
        pt = self.config.prediction_type
        if pt == "epsilon":
            x0 = (sample - beta**0.5 * model_output) / alpha**0.5
        elif pt == "sample":
            x0 = model_output
        elif pt == "v_prediction":
            x0 = alpha**0.5 * sample - beta**0.5 * model_output
        else:
            raise ValueError(f"prediction_type must be 'epsilon', 'sample' or 'v_prediction', got {pt!r}")
        lam = ((alpha / (1 - alpha)) ** 0.5).log()
        h = ((alpha_prev / (1 - alpha_prev)) ** 0.5).log() - lam
        keep = ((1 - alpha_prev) / (1 - alpha)) ** 0.5 * (-h).exp()
        towards = (-2 * h).expm1() * alpha_prev**0.5
        noise_scale = (1 - alpha_prev) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5
        noise = randn_tensor(sample.shape, generator, sample.device, sample.dtype)
        if old_pred_original_sample is None or timestep_back is None or prev_t < 0:
            prev_sample = keep * sample - towards * x0 + noise_scale * noise
        else:
            alpha_back = self.alphas_cumprod[int(timestep_back)]
            r = (lam - ((alpha_back / (1 - alpha_back)) ** 0.5).log()) / h
            denoised = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * old_pred_original_sample
            noise = randn_tensor(sample.shape, generator, sample.device, sample.dtype)
            prev_sample = keep * sample - towards * denoised + noise_scale * noise
        self._advance(position)
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutputWithX0(prev_sample=prev_sample, pred_original_sample=x0)
