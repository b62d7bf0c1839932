"""Pieces shared by the discrete-time scheduler plugins (DDPM, DDIM, PNDM, LMS, Euler, Heun, KDPM2, LCM, TCD).

Two families live on top of the noise-schedule math in :mod:`kernel_sched_common.schedules`:

* *alpha-table* schedulers (DDPM, DDIM, PNDM, LCM, TCD) step with ``alpha_bar(t)`` looked up by an
  integer timestep: :class:`AlphaTableMixin` builds the table, ``add_noise`` and ``get_velocity``;
  :func:`split_prediction` turns a model output into ``(x0, eps)`` for each ``prediction_type``.
* *sigma* (k-diffusion style, Karras et al. 2022) schedulers (Euler, Heun, LMS, KDPM2) work with
  ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` and a model input scaled by ``1 / sqrt(sigma^2 + 1)``:
  :class:`SigmaScheduler` builds the sigma schedule, ``init_noise_sigma``, ``scale_model_input``
  and ``add_noise``, tracking the loop with :class:`~kernel_sched_common.step_index.StepIndexMixin`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from kernel.config import init_keys
from kernel.scheduling import SchedulerMixin

from kernel_sched_common.schedules import (
    broadcast_to,
    check_choice,
    check_sigma_options,
    convert_sigmas,
    float_spaced_timesteps,
    make_betas,
    rescale_zero_terminal_snr,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    validate_custom_schedule,
    validate_num_inference_steps,
)
from kernel_sched_common.step_index import StepIndexMixin, as_host_array, host_scalar, match_index

#: The Diffusers scheduler names that share the alpha/sigma training schedule and can be
#: built from each other's configs (Diffusers' ``KarrasDiffusionSchedulers``).
KARRAS_COMPATIBLES: tuple[str, ...] = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
)

THREE_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# ---------------------------------------------------------------------------- alpha tables
def split_prediction(
    prediction_type: str,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor,
    beta_prod_t: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, eps)`` implied by the model output (Ho et al. 2020 eq. 15; Salimans & Ho 2022 for ``v``)."""
    sqrt_a, sqrt_b = alpha_prod_t**0.5, beta_prod_t**0.5
    if prediction_type == "epsilon":
        return (sample - sqrt_b * model_output) / sqrt_a, model_output
    if prediction_type == "sample":
        return model_output, (sample - sqrt_a * model_output) / sqrt_b
    if prediction_type == "v_prediction":
        return sqrt_a * sample - sqrt_b * model_output, sqrt_a * model_output + sqrt_b * sample
    raise ValueError(f"prediction_type={prediction_type!r} is not supported; accepted values: epsilon, sample, v_prediction")


def build_alpha_tables(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Any,
    rescale_betas_zero_snr: bool = False,
    accepted: Sequence[str] = THREE_BETA_SCHEDULES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(betas, alphas, alphas_cumprod)`` as float32 CPU tensors for a Diffusers-style beta config."""
    betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, accepted)
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    alphas = 1.0 - betas
    return betas, alphas, torch.cumprod(alphas, dim=0)


def alpha_tables_for(
    config: Any, accepted: Sequence[str] = THREE_BETA_SCHEDULES
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`build_alpha_tables` for a scheduler config (``rescale_betas_zero_snr`` where it has one)."""
    return build_alpha_tables(
        config.num_train_timesteps,
        config.beta_start,
        config.beta_end,
        config.beta_schedule,
        config.trained_betas,
        bool(config.get("rescale_betas_zero_snr", False)),
        accepted,
    )


class AlphaTableMixin:
    """The ``betas`` / ``alphas`` / ``alphas_cumprod`` tables (CPU, float32) and what they give."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor

    def _build_alpha_tables(self, config: Any, accepted: Sequence[str] = THREE_BETA_SCHEDULES) -> None:
        self.betas, self.alphas, self.alphas_cumprod = alpha_tables_for(config, accepted)

    def _alpha_bar_pair(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        table = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)
        picked = table[timesteps.to(like.device)]
        return broadcast_to(picked**0.5, like), broadcast_to((1 - picked) ** 0.5, like)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` (Ho et al. 2020, eq. 4)."""
        signal, noise_level = self._alpha_bar_pair(torch.as_tensor(timesteps), original_samples)
        return signal * original_samples + noise_level * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The ``v`` target ``sqrt(a_t) eps - sqrt(1 - a_t) x0`` (Salimans & Ho 2022, section 4)."""
        signal, noise_level = self._alpha_bar_pair(torch.as_tensor(timesteps), sample)
        return signal * noise - noise_level * sample


# ---------------------------------------------------------------------------- sigma schedulers
class SigmaScheduler(StepIndexMixin, SchedulerMixin):
    """Base of the k-diffusion style schedulers: ``x = x0 + sigma * eps`` with a scaled model input.

    Subclasses call :meth:`_build_sigma_tables` in ``__init__`` and build their inference schedule
    with :meth:`_spaced_sigmas`, then publish it with :meth:`_publish`.
    """

    #: whether the Karras spacing honours ``config.sigma_min``/``sigma_max`` (LMS ignores them)
    _karras_uses_config_range = True
    sigmas: torch.Tensor
    timesteps: torch.Tensor
    num_inference_steps: int | None = None

    def _build_sigma_tables(self, config: Any, accepted: Sequence[str] = THREE_BETA_SCHEDULES) -> None:
        check_choice("timestep_spacing", config.timestep_spacing, ("linspace", "leading", "trailing"))
        self.betas, self.alphas, self.alphas_cumprod = alpha_tables_for(config, accepted)
        if config.get("rescale_betas_zero_snr", False):
            # sigma would be infinite at the zero-SNR step; a tiny alpha_bar keeps it finite.
            self.alphas_cumprod[-1] = 2**-24

    def _setup_sigma_tables(self, prediction_types: Sequence[str], accepted: Sequence[str] = THREE_BETA_SCHEDULES) -> None:
        """Check ``prediction_type`` and the sigma-spacing flags this class takes, then build the tables."""
        check_choice("prediction_type", self.config.prediction_type, prediction_types)
        check_sigma_options(*(bool(self._option(k)) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")))
        self._build_sigma_tables(self.config, accepted)

    def _train_sigmas(self) -> np.ndarray:
        return sigmas_from_alphas_cumprod(self.alphas_cumprod)

    def _option(self, key: str, default: Any = False) -> Any:
        """A config value this class takes (keys kept from another scheduler's config are ignored)."""
        return self.config[key] if key in init_keys(type(self)) and key in self.config else default

    def _spaced_sigmas(
        self,
        num_inference_steps: int,
        num_train_timesteps: int | None = None,
        timesteps: Any = None,
        log_linear: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(timesteps, sigmas, log_sigmas)`` before the final sigma is appended.

        Timesteps are spaced per ``timestep_spacing`` (or given), sigmas interpolated from the
        training sigmas and, with Karras / exponential / beta spacing, respaced with their
        timesteps recovered by log-sigma interpolation.
        """
        cfg = self.config
        if timesteps is not None:
            steps = np.asarray(as_host_array(timesteps), dtype=np.float32)
        else:
            steps = float_spaced_timesteps(
                cfg.timestep_spacing, num_inference_steps, num_train_timesteps or cfg.num_train_timesteps, cfg.steps_offset
            )
        train_sigmas = self._train_sigmas()
        log_sigmas = np.log(train_sigmas)
        if log_linear:
            # Evenly spaced in log sigma from the largest training sigma down; n + 1 values, as Diffusers builds it.
            grid = torch.linspace(float(log_sigmas[-1]), float(log_sigmas[0]), num_inference_steps + 1)
            sigmas = grid.exp().numpy()
        else:
            sigmas = np.interp(steps, np.arange(len(train_sigmas)), train_sigmas)
        options = {k: bool(self._option(k)) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")}
        if any(options.values()):
            # Like Diffusers, a sigma range kept in the config (even from another scheduler's) bounds the respacing.
            lo, hi = cfg.get("sigma_min"), cfg.get("sigma_max")
            if options["use_karras_sigmas"] and not self._karras_uses_config_range:
                lo = hi = None
            sigmas = convert_sigmas(sigmas, num_inference_steps, sigma_min=lo, sigma_max=hi, **options)
            steps = sigma_to_t(sigmas, log_sigmas)
        return steps, sigmas, log_sigmas

    def _publish(self, timesteps: torch.Tensor, sigmas: torch.Tensor, device: Any) -> None:
        """Store the schedule: ``sigmas`` stay on the CPU, ``timesteps`` go to ``device`` for the loop."""
        self.sigmas = sigmas.to("cpu")
        self._schedule_host = timesteps.detach().cpu().numpy()
        self.timesteps = timesteps.to(device) if device is not None else timesteps
        self._reset_step_index()

    def _check_sigma_set_timesteps(self, num_inference_steps: Any, timesteps: Any = None, sigmas: Any = None) -> int:
        """Shared argument checks of ``set_timesteps``; returns the number of steps."""
        given = [name for name, v in (("timesteps", timesteps), ("sigmas", sigmas)) if v is not None]
        validate_custom_schedule(timesteps, sigmas)
        if given and num_inference_steps is not None:
            raise ValueError(f"pass either num_inference_steps or {given[0]} to set_timesteps, not both")
        if not given and num_inference_steps is None:
            raise ValueError("set_timesteps needs num_inference_steps (or custom timesteps/sigmas)")
        if given:
            for option in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
                if timesteps is not None and self._option(option):
                    raise ValueError(f"custom timesteps cannot be combined with {option}=True")
            return len(timesteps) if timesteps is not None else len(sigmas) - 1
        return validate_num_inference_steps(num_inference_steps, self.config.num_train_timesteps)

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """Scale of the starting noise: ``sigma_max`` (or ``sqrt(sigma_max^2 + 1)`` for leading spacing)."""
        top = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return top
        return (top**2 + 1) ** 0.5

    def _input_sigma(self) -> torch.Tensor:
        return self.sigmas[self._step_index]

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Divide by ``sqrt(sigma^2 + 1)`` so the model sees unit-variance input (Karras et al. 2022, Table 1)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self._input_sigma()
        self.is_scale_input_called = True
        return sample / ((sigma**2 + 1) ** 0.5)

    def _steps_for_add_noise(self, timesteps: torch.Tensor) -> list[int] | torch.Tensor:
        if self._begin_index is not None:
            index = self._step_index if self._step_index is not None else self._begin_index
            return [index] * timesteps.shape[0]
        values = [host_scalar(t) for t in timesteps] if timesteps.device.type == "cpu" else None
        if values is not None:
            return [match_index(self._schedule_host, v) for v in values]
        # Accelerator timesteps: find each one's index on the device (same second-match rule).
        schedule = torch.as_tensor(self._schedule_host, device=timesteps.device)
        hits = schedule[None, :] == timesteps.reshape(-1, 1).to(schedule.dtype)
        running = hits.cumsum(dim=1)
        wanted = torch.where(hits.sum(dim=1, keepdim=True) > 1, 2, 1)
        return torch.argmax(((running == wanted) & hits).int(), dim=1)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x = x0 + sigma(t) * noise`` with ``sigma`` looked up by each timestep's schedule position."""
        timesteps = torch.as_tensor(timesteps)
        if timesteps.ndim == 0:
            timesteps = timesteps.reshape(1)
        indices = self._steps_for_add_noise(timesteps)
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        if isinstance(indices, torch.Tensor):
            indices = indices.to(original_samples.device)
        sigma = broadcast_to(sigmas[indices], original_samples)
        return original_samples + noise * sigma

    def _x0_from_sigma(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Denoised estimate for ``epsilon`` / ``v_prediction`` / ``sample`` outputs at noise level ``sigma``."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return sample - sigma * model_output
        if kind == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        return model_output

    def __len__(self) -> int:
        return self.config.num_train_timesteps
