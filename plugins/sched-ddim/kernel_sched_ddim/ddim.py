"""Denoising diffusion implicit models (Song, Meng & Ermon 2021), and their inversion.

The generalised update (eq. 12) moves from ``x_t`` to ``x_{t'}`` with the model's ``x0`` and
``eps`` estimates: ``x_{t'} = sqrt(a_{t'}) x0 + sqrt(1 - a_{t'} - s^2) eps + s z`` with
``s = eta * sqrt((1 - a_{t'}) / (1 - a_t) * (1 - a_t / a_{t'}))`` (eq. 16).  ``eta = 0`` gives
the deterministic sampler; running the same map towards higher noise (eta = 0) inverts it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kernel.config import init_keys, register_to_config
from kernel.scheduling import SchedulerMixin, SchedulerOutputWithX0, randn_tensor
from kernel_sched_common import (
    KARRAS_COMPATIBLES,
    AlphaTableMixin,
    StepIndexMixin,
    check_choice,
    spaced_timesteps,
    split_prediction,
    threshold_sample,
    validate_num_inference_steps,
)


class _DDIMBase(StepIndexMixin, AlphaTableMixin, SchedulerMixin):
    """Alpha tables, schedule storage and the ``x0`` clipping shared by DDIM and its inverse."""

    order = 1

    def _setup(self, spacings: tuple[str, ...], descending: bool) -> None:
        cfg = self.config
        check_choice("prediction_type", cfg.prediction_type, ("epsilon", "sample", "v_prediction"))
        check_choice("timestep_spacing", cfg.timestep_spacing, spacings)
        self._build_alpha_tables(cfg)
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        steps = np.arange(cfg.num_train_timesteps)
        self._store(steps[::-1].copy() if descending else steps, None)

    def _store(self, timesteps: np.ndarray, device: Any) -> None:
        self._schedule_host = timesteps.astype(np.int64)
        self.timesteps = torch.from_numpy(self._schedule_host.copy()).to(device)
        self._reset_step_index()

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """DDIM feeds the model the sample unchanged."""
        return sample

    def _stride(self) -> int:
        return self.config.num_train_timesteps // self.num_inference_steps

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        # A thresholding flag kept from another scheduler's config does not apply to the inverse.
        if "thresholding" in init_keys(type(self)) and cfg.thresholding:
            return threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        if cfg.clip_sample:
            return x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        return x0


class DDIMScheduler(_DDIMBase):
    """DDIM sampler; ``eta`` in ``step`` blends from deterministic (0) to DDPM-like (1)."""

    _compatibles = KARRAS_COMPATIBLES

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        self._setup(("leading", "trailing", "linspace"), descending=True)
        # alpha_bar "after" the last step: 1 (clean) or that of the first training step.
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Space ``num_inference_steps`` of the training timesteps (``timestep_spacing``)."""
        cfg = self.config
        self.num_inference_steps = validate_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        steps = spaced_timesteps(cfg.timestep_spacing, self.num_inference_steps, cfg.num_train_timesteps, cfg.steps_offset)
        self._store(steps, device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """Generalised DDIM update (eq. 12) from ``timestep`` to ``timestep - T // n``."""
        self._require_timesteps()
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise to step, not both")
        t, position = self._locate(timestep)
        t = int(t)
        prev_t = t - self._stride()
        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_bar = 1 - alpha_bar
        x0, eps = split_prediction(self.config.prediction_type, model_output, sample, alpha_bar, beta_bar)
        x0 = self._clip(x0)
        # sigma_t(eta) of eq. 16.
        variance = ((1 - alpha_bar_prev) / beta_bar) * (1 - alpha_bar / alpha_bar_prev)
        std = eta * variance**0.5
        if use_clipped_model_output:
            eps = (sample - alpha_bar**0.5 * x0) / beta_bar**0.5
        prev_sample = alpha_bar_prev**0.5 * x0 + (1 - alpha_bar_prev - std**2) ** 0.5 * eps
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample + std * variance_noise
        self._advance(position)
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutputWithX0(prev_sample=prev_sample, pred_original_sample=x0)


class DDIMInverseScheduler(_DDIMBase):
    """Deterministic DDIM run backwards: from a clean latent towards noise (ascending timesteps)."""

    ignore_for_config = ("kwargs",)

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        **kwargs,
    ):
        unknown = set(kwargs) - {"set_alpha_to_zero"}
        if unknown:
            raise TypeError(f"DDIMInverseScheduler got unexpected arguments: {sorted(unknown)}")
        if kwargs.get("set_alpha_to_zero") is not None:
            # Old name of the same switch, still found in saved configs.
            set_alpha_to_one = kwargs["set_alpha_to_zero"]
        self._setup(("leading", "trailing"), descending=False)
        self.initial_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Ascending timesteps: the DDIM schedule in reverse order."""
        cfg = self.config
        self.num_inference_steps = validate_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        steps = spaced_timesteps(cfg.timestep_spacing, self.num_inference_steps, cfg.num_train_timesteps, cfg.steps_offset)
        self._store(steps[::-1].copy(), device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ):
        """DDIM update (eta = 0) from ``timestep - T // n`` up to ``timestep``."""
        self._require_timesteps()
        target, position = self._locate(timestep)
        target = int(target)
        source = min(target - self._stride(), self.config.num_train_timesteps - 1)
        alpha_bar = self.alphas_cumprod[source] if source >= 0 else self.initial_alpha_cumprod
        alpha_bar_next = self.alphas_cumprod[target]
        x0, eps = split_prediction(self.config.prediction_type, model_output, sample, alpha_bar, 1 - alpha_bar)
        x0 = self._clip(x0)
        prev_sample = alpha_bar_next**0.5 * x0 + (1 - alpha_bar_next) ** 0.5 * eps
        self._advance(position)
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutputWithX0(prev_sample=prev_sample, pred_original_sample=x0)
