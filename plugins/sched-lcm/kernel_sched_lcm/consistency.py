"""The timestep schedule shared by consistency-distilled samplers (LCM, TCD).

A latent consistency model (Luo et al. 2023, "Latent Consistency Models", skipping-step distillation)
is trained on a *skipping* schedule: ``original_inference_steps`` evenly spaced training timesteps ``k - 1, 2k - 1, ...`` with ``k = num_train_timesteps // original_inference_steps``.  At
inference ``num_inference_steps`` of them are picked, evenly by index, from the top down; image to
image (``strength < 1``) keeps the lower part of the skipping schedule only.

:class:`ConsistencyScheduleMixin` holds that schedule, the alpha tables and the step-index
bookkeeping; LCM and TCD add their own ``step``.  It lives in this package so that the TCD plugin
(which depends on this one) writes none of it again.
"""

from __future__ import annotations

import logging
from numbers import Real
from typing import Any

import numpy as np
import torch

from kernel.scheduling import SchedulerMixin
from kernel_sched_common import (
    AlphaTableMixin,
    StepIndexMixin,
    as_host_array,
    check_choice,
    host_scalar,
    threshold_sample,
    validate_custom_schedule,
    validate_num_inference_steps,
)

logger = logging.getLogger(__name__)


class ConsistencyScheduleMixin(StepIndexMixin, AlphaTableMixin, SchedulerMixin):
    """Skipping-step schedule, alpha tables and ``step_index`` tracking of LCM-style samplers.

    Subclasses call :meth:`_setup` from ``__init__`` and implement ``step`` with :meth:`_begin_step`.
    """

    order = 1
    #: sigma_data of the consistency-model boundary condition (Song et al. 2023)
    sigma_data = 0.5

    def _setup(self) -> None:
        cfg = self.config
        check_choice("prediction_type", cfg.prediction_type, ("epsilon", "sample", "v_prediction"))
        check_choice("timestep_spacing", cfg.timestep_spacing, ("linspace", "leading", "trailing"))
        self._build_alpha_tables(cfg)
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.custom_timesteps = False
        self._store(np.arange(cfg.num_train_timesteps)[::-1].copy(), None)

    def _store(self, timesteps: np.ndarray, device: Any) -> None:
        self._schedule_host = np.asarray(timesteps, dtype=np.int64)
        self.timesteps = torch.from_numpy(self._schedule_host.copy()).to(device=device, dtype=torch.long)
        self._reset_step_index()

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Consistency samplers feed the model the sample unchanged."""
        return sample

    # ------------------------------------------------------------------ schedule
    def _origin_timesteps(self, original_steps: int, strength: float, original_given: bool) -> np.ndarray:
        """Ascending skipping schedule ``k - 1, 2k - 1, ...`` cut to ``strength`` of its length."""
        k = self.config.num_train_timesteps // original_steps
        return np.arange(1, int(original_steps * strength) + 1) * k - 1

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        original_inference_steps: int | None = None,
        timesteps: list[int] | None = None,
        strength: float = 1.0,
    ) -> None:
        """Pick ``num_inference_steps`` timesteps of the skipping schedule, or use custom ``timesteps``.

        ``original_inference_steps`` overrides the config's length of the distillation schedule;
        ``strength`` (image to image) keeps only its lower ``strength`` fraction.
        """
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps to set_timesteps")
        if isinstance(strength, bool) or not isinstance(strength, Real) or not 0 < strength <= 1:
            raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
        n_train = self.config.num_train_timesteps
        original = self.config.original_inference_steps if original_inference_steps is None else original_inference_steps
        if isinstance(original, bool) or not isinstance(original, (int, np.integer)):
            raise TypeError(f"original_inference_steps must be an int, got {type(original).__name__}")
        if not 1 <= original <= n_train:
            raise ValueError(
                f"original_inference_steps={original} must be between 1 and num_train_timesteps={n_train}"
            )
        origin = self._origin_timesteps(int(original), float(strength), original_inference_steps is not None)
        if timesteps is not None:
            steps = self._checked_custom(timesteps, origin, int(original), strength)
            n = len(steps)
            self.num_inference_steps, self.custom_timesteps = n, True
            # Image to image starts the custom schedule later, like any other.
            start = max(n - min(int(n * strength), n), 0)
            steps = steps[start * self.order :]
            if len(steps) == 0:
                raise ValueError(
                    f"strength={strength} keeps none of the {n} custom timesteps; raise strength or pass more timesteps"
                )
        else:
            n = validate_num_inference_steps(num_inference_steps, n_train)
            if len(origin) < n:
                raise ValueError(
                    f"num_inference_steps={n} is more than the {len(origin)} timesteps the distillation schedule "
                    f"keeps (original_inference_steps x strength = {original} x {strength}); lower "
                    "num_inference_steps or raise strength"
                )
            if n > original:
                raise ValueError(
                    f"num_inference_steps={n} cannot be larger than original_inference_steps={original}: the "
                    "inference timesteps are a subset of the distillation schedule"
                )
            self.num_inference_steps, self.custom_timesteps = n, False
            descending = origin[::-1]
            picks = np.floor(np.linspace(0, len(descending), num=n, endpoint=False)).astype(np.int64)
            steps = descending[picks]
        self._store(steps, device)

    def _checked_custom(self, timesteps: Any, origin: np.ndarray, original: int, strength: float) -> np.ndarray:
        validate_custom_schedule(timesteps)
        values = as_host_array(timesteps)
        steps = values.astype(np.int64)
        if not np.array_equal(steps, values):
            raise ValueError(f"custom timesteps must be integers, got {values.tolist()}")
        n_train = self.config.num_train_timesteps
        if steps[0] >= n_train:
            raise ValueError(f"custom timesteps must be below num_train_timesteps={n_train}, got {int(steps[0])}")
        if steps[-1] < 0:
            raise ValueError(f"custom timesteps must be non-negative, got {int(steps[-1])}")
        if strength == 1.0 and steps[0] != n_train - 1:
            logger.warning(
                "custom timesteps start at %d, not at num_train_timesteps - 1 = %d; results may be poor",
                steps[0], n_train - 1,
            )
        off_schedule = [int(t) for t in steps[1:] if t not in set(origin.tolist())]
        if off_schedule:
            logger.warning("custom timesteps %s are not on the distillation schedule; results may be poor", off_schedule)
        if len(steps) > original:
            logger.warning(
                "%d custom timesteps exceed original_inference_steps=%d; results may be poor", len(steps), original
            )
        return steps

    # ------------------------------------------------------------------ stepping helpers
    def _begin_step(self, timestep: Any) -> tuple[int, int]:
        """``(t, i)``: the timestep value and its schedule position, read without touching device memory."""
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        value = host_scalar(timestep)
        if value is None:
            if i >= len(self._schedule_host):
                raise ValueError(
                    f"step called {i + 1} times on a schedule of {len(self._schedule_host)} timesteps; "
                    "call set_timesteps again"
                )
            value = self._schedule_host[i]
        return int(value), i

    def _following(self, i: int) -> int | None:
        """The schedule entry after position ``i`` (``None`` after the last)."""
        return int(self._schedule_host[i + 1]) if i + 1 < len(self._schedule_host) else None

    def _alpha_bar(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.thresholding:
            return threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        if cfg.clip_sample:
            return x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        return x0

    def previous_timestep(self, timestep: Any) -> int:
        """The timestep after ``timestep`` in the schedule (``-1`` after the last one)."""
        if not (self.custom_timesteps or self.num_inference_steps):
            value = host_scalar(timestep)
            return int(value) - 1 if value is not None else int(self._schedule_host[self._position()]) - 1
        value, position = self._locate(timestep)
        if position is None:
            raise ValueError(f"timestep {value} is not one of the scheduler's timesteps {self._schedule_host.tolist()}")
        following = self._following(position)
        return -1 if following is None else following
