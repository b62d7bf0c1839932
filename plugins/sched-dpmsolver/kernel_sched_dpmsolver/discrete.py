"""The discrete-time (VP, beta-schedule) base of DPM-Solver, DEIS and UniPC.

Holds what these schedulers share and nothing else: the ``alphas_cumprod`` tables, the
solver grid (timesteps spaced the DPM-Solver way, or respaced in sigma), conversion of a
model output into a data or noise prediction, and ``add_noise``.  The solver updates
themselves live in :mod:`kernel_sched_dpmsolver.solver_math`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from kernel.scheduling import SchedulerMixin
from kernel_sched_common import (
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    broadcast_to,
    build_alpha_tables,
    check_choice,
    check_sigma_options,
    convert_sigmas,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    threshold_sample,
)

from .solver_math import flow_alpha_sigma, vp_alpha_sigma
from .stepping import StepIndexMixin

VP_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
#: Smallest ``alpha_bar`` kept at the terminal step of a zero-SNR schedule (Lin et al. 2023 sets it
#: to exactly 0, which would make sigma infinite).
ZERO_SNR_ALPHA_BAR = 2.0**-24


def dpm_timesteps(
    spacing: str, num_inference_steps: int, num_train_timesteps: int, last_timestep: int, steps_offset: int = 0
) -> np.ndarray:
    """Descending integer timesteps of the multistep solvers.

    ``n + 1`` points are laid out over ``[0, last_timestep)`` and the final (t = 0) one is
    dropped, because the solver's last step lands on the separately appended final sigma.
    """
    check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    n = num_inference_steps
    if spacing == "linspace":
        return np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last_timestep // (n + 1)
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
    ratio = num_train_timesteps / n
    return np.arange(last_timestep, 0, -ratio).round().copy().astype(np.int64) - 1


def flow_shifted(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Resolution-dependent shift of flow sigmas (Esser et al. 2024, SD3, eq. 23)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def to_data_prediction(
    prediction_type: str, model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor,
    alpha_t: torch.Tensor, sigma_t: torch.Tensor,
) -> torch.Tensor:
    """The x0 estimate implied by a model output of the given ``prediction_type``."""
    if prediction_type == "epsilon":
        return (sample - sigma_t * model_output) / alpha_t
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_t * sample - sigma_t * model_output
    if prediction_type == "flow_prediction":
        return sample - sigma * model_output
    raise ValueError(f"prediction_type={prediction_type!r} is not supported; accepted values: {', '.join(PREDICTION_TYPES)}")


def to_noise_prediction(
    prediction_type: str, model_output: torch.Tensor, sample: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor,
) -> torch.Tensor:
    """The noise estimate implied by a model output (noise-prediction solvers)."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return (sample - alpha_t * model_output) / sigma_t
    if prediction_type == "v_prediction":
        return alpha_t * model_output + sigma_t * sample
    raise ValueError(
        f"prediction_type={prediction_type!r} is not supported by the noise-prediction solver; "
        "accepted values: epsilon, sample, v_prediction"
    )


class DiscreteSolverBase(StepIndexMixin, SchedulerMixin):
    """VP tables, grid construction, prediction conversion and ``add_noise`` for the solvers."""

    _compatibles: tuple[str, ...] = ()
    order = 1
    #: Karras timesteps are rounded to integers unless the beta schedule is cosine (multistep);
    #: other solvers always round.
    _round_karras_times = False

    # ------------------------------------------------------------------ construction
    def _build_tables(
        self,
        num_train_timesteps: int,
        beta_start: float,
        beta_end: float,
        beta_schedule: str,
        trained_betas: Any,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        check_choice("prediction_type", self.config.prediction_type, PREDICTION_TYPES)
        check_sigma_options(
            self.config.get("use_karras_sigmas", False),
            self.config.get("use_exponential_sigmas", False),
            self.config.get("use_beta_sigmas", False),
        )
        if not isinstance(num_train_timesteps, (int, np.integer)) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")
        self.betas, self.alphas, self.alphas_cumprod = build_alpha_tables(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr,
            VP_BETA_SCHEDULES,
        )
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = ZERO_SNR_ALPHA_BAR
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(
            np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=np.float32)[::-1].copy()
        )
        self._step_index = None
        self._begin_index = None
        self._flow_shift = None

    # ------------------------------------------------------------------ grid
    @property
    def _uses_flow(self) -> bool:
        return bool(self.config.get("use_flow_sigmas", False))

    def _alpha_sigma(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return flow_alpha_sigma(sigma) if self._uses_flow else vp_alpha_sigma(sigma)

    def _point(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_t, sigma_t)`` at grid position ``index`` as 0-d CPU tensors."""
        return self._alpha_sigma(self.sigmas[index])

    def _train_sigmas(self) -> tuple[np.ndarray, np.ndarray]:
        sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        return sigmas, np.log(sigmas)

    def _sigma_bounds(self) -> dict:
        return {"sigma_min": self.config.get("sigma_min"), "sigma_max": self.config.get("sigma_max")}

    def _respaced(self, num_inference_steps: int, sigmas: np.ndarray) -> np.ndarray | None:
        """Karras / exponential / beta sigmas over the (descending) ``sigmas``, or None if none is set."""
        cfg = self.config
        if not (cfg.get("use_karras_sigmas") or cfg.get("use_exponential_sigmas") or cfg.get("use_beta_sigmas")):
            return None
        return convert_sigmas(
            sigmas,
            num_inference_steps,
            use_karras_sigmas=cfg.get("use_karras_sigmas", False),
            use_exponential_sigmas=cfg.get("use_exponential_sigmas", False),
            use_beta_sigmas=cfg.get("use_beta_sigmas", False),
            **self._sigma_bounds(),
        )

    @staticmethod
    def _times_of(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
        return np.array([sigma_to_t(s, log_sigmas) for s in sigmas])

    def _current_flow_shift(self) -> float:
        return self._flow_shift if self._flow_shift is not None else self.config.flow_shift

    def _apply_mu(self, mu: float | None) -> None:
        """``mu`` (dynamic shifting, Esser et al. 2024) replaces ``flow_shift`` by ``exp(mu)`` from now on."""
        if mu is None:
            return
        if not self.config.get("use_dynamic_shifting", False) or self.config.get("time_shift_type") != "exponential":
            raise ValueError(
                "mu is only used with use_dynamic_shifting=True and time_shift_type='exponential'; "
                f"this scheduler has use_dynamic_shifting={self.config.get('use_dynamic_shifting')!r}"
            )
        self._flow_shift = float(np.exp(mu))

    def _grid_sigmas(self, num_inference_steps: int | None, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sigmas at the grid points (without the final one) and the matching timesteps."""
        cfg = self.config
        train, log_train = self._train_sigmas()
        round_karras = self._round_karras_times or cfg.beta_schedule != "squaredcos_cap_v2"
        respaced = self._respaced(num_inference_steps, np.flip(train).copy()) if num_inference_steps else None
        if respaced is not None:
            times = self._times_of(respaced, log_train)
            if cfg.use_karras_sigmas and round_karras:
                times = times.round()
            return respaced, times
        if cfg.get("use_lu_lambdas"):
            # uniform in lambda = -log(sigma) (Lu et al. 2022b, section 4): linear ramp between the ends
            lambdas = np.flip(log_train.copy())
            lo, hi = float(lambdas[-1]), float(lambdas[0])
            lambdas = hi + np.linspace(0, 1, num_inference_steps) * (lo - hi)
            sigmas = np.exp(lambdas)
            times = self._times_of(sigmas, log_train)
            return sigmas, (times.round() if round_karras else times)
        if cfg.use_flow_sigmas:
            n = num_inference_steps if num_inference_steps is not None else len(timesteps)
            raw = 1.0 - np.linspace(1, 1 / cfg.num_train_timesteps, n + 1)
            sigmas = np.flip(flow_shifted(raw, self._current_flow_shift()))[:-1].copy()
            return sigmas, sigmas * cfg.num_train_timesteps
        return np.interp(timesteps, np.arange(0, len(train)), train), timesteps

    def _install_grid(self, sigmas: np.ndarray, timesteps: np.ndarray, device: Any) -> None:
        """Store the float32 sigma table on the host and the int64 timesteps on ``device``."""
        self.sigmas = torch.from_numpy(np.asarray(sigmas, dtype=np.float32))
        timesteps = torch.from_numpy(np.asarray(timesteps)).to(dtype=torch.int64)
        self._store_timesteps(timesteps, device)
        self.num_inference_steps = len(timesteps)
        self._step_index = None
        self._begin_index = None

    # ------------------------------------------------------------------ predictions
    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        return threshold_sample(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)

    def _data_prediction(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        sigma = self.sigmas[self.step_index]
        alpha_t, sigma_t = self._alpha_sigma(sigma)
        x0 = to_data_prediction(self.config.prediction_type, model_output, sample, sigma, alpha_t, sigma_t)
        return self._threshold(x0) if self.config.thresholding else x0

    # ------------------------------------------------------------------ common API
    def scale_model_input(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """These solvers feed the sample to the model unscaled."""
        return sample

    def _require_grid(self) -> None:
        self._require_timesteps()

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``alpha_t x0 + sigma_t noise`` at the grid points of ``timesteps`` (one per batch item)."""
        indices = self._step_indices_for(timesteps)
        sigma = self.sigmas.to(dtype=original_samples.dtype)[indices].flatten()
        sigma = broadcast_to(sigma, original_samples).to(original_samples.device)
        alpha_t, sigma_t = self._alpha_sigma(sigma)
        return alpha_t * original_samples + sigma_t * noise


def check_solver_order(solver_order: Any, allowed: Sequence[int] = (1, 2, 3)) -> None:
    if isinstance(solver_order, bool) or not isinstance(solver_order, (int, np.integer)) or solver_order not in allowed:
        raise ValueError(f"solver_order={solver_order!r} is not supported; accepted values: {', '.join(map(str, allowed))}")


def resolve_alias(argument: str, value: Any, accepted: Sequence[str], aliases: dict) -> str:
    """Map Diffusers' cross-scheduler aliases (e.g. ``deis`` -> ``dpmsolver++``) and validate."""
    if value in aliases:
        return aliases[value]
    check_choice(argument, value, tuple(accepted) + tuple(aliases))
    return value
