"""Pseudo numerical methods for diffusion models (Liu, Ren, Lin & Zhao 2022, "PNDM").

The reverse process is integrated with the *transfer* map ``phi`` of eq. 9 (a DDIM step driven by a
noise estimate) and a numerical method choosing which noise estimate to feed it:

* pseudo Runge-Kutta (PRK): four model evaluations per interval (start, twice at the
  midpoint, end), blended with weights 1/6, 1/3, 1/3, 1/6; used for the first three intervals;
* pseudo linear multistep (PLMS): the fourth-order Adams-Bashforth blend of the last four
  noise estimates, one model evaluation per step.

With ``skip_prk_steps`` the warm-up is the cheaper one used by Stable Diffusion: the first interval
is taken twice (an Euler step and then a trapezoidal one, Heun-like), and the multistep order
grows from one to four as estimates accumulate.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerMixin, SchedulerOutput
from kernel_sched_common import (
    KARRAS_COMPATIBLES,
    AlphaTableMixin,
    BeginIndexMixin,
    check_begin_index,
    check_choice,
    host_scalar,
    spaced_timesteps,
    validate_num_inference_steps,
)

#: Adams-Bashforth weights (newest estimate first) and their common denominator, by order.
_ADAMS_BASHFORTH = {
    1: ((1,), 1),
    2: ((3, -1), 2),
    3: ((23, -16, 5), 12),
    4: ((55, -59, 37, -9), 24),
}


def adams_bashforth(history: Sequence[torch.Tensor]) -> torch.Tensor:
    """Linear multistep blend of up to the four newest noise estimates in ``history`` (oldest first)."""
    weights, denominator = _ADAMS_BASHFORTH[min(len(history), 4)]
    if denominator == 1:
        return history[-1]
    total = weights[0] * history[-1]
    for back, weight in enumerate(weights[1:], start=2):
        total = total + weight * history[-back]
    if denominator == 24:
        # The fourth-order sum is scaled by the reciprocal, rounding exactly as the reference does.
        return (1 / 24) * total
    return total / denominator


class PNDMScheduler(BeginIndexMixin, AlphaTableMixin, SchedulerMixin):
    """PRK warm-up followed by PLMS steps (or PLMS only with ``skip_prk_steps``).

    ``step`` keeps its own counter; the timesteps must be stepped in order, one model evaluation per
    entry of ``timesteps`` (the PRK part repeats the midpoints).  The position in the schedule is
    ``begin_index + counter`` (``set_begin_index`` for a loop that starts mid-schedule): it decides
    the warm-up stage and, for a timestep on an accelerator, which entry of the host copy of the
    schedule it is, so the loop never synchronises.  A timestep given as a Python number or CPU
    tensor is used as is.
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ):
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction"))
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        self._build_alpha_tables(self.config)
        # alpha_bar "after" the last step: 1 (clean) or that of the first training step.
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.pndm_order = 4
        self.num_inference_steps = None
        self._timesteps = np.arange(num_train_timesteps)[::-1].copy()
        self.prk_timesteps = None
        self.plms_timesteps = None
        self.timesteps = None
        self._schedule_host = np.zeros(0, dtype=np.int64)
        self._reset_state()

    def _reset_state(self) -> None:
        self.counter = 0
        self._begin_index = None
        self.ets: list[torch.Tensor] = []
        self.cur_model_output: Any = 0
        self.cur_sample = None

    # ------------------------------------------------------------------ schedule
    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Build the PRK (12 entries) and PLMS parts of the schedule for ``num_inference_steps`` intervals."""
        cfg = self.config
        n = validate_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        if not cfg.skip_prk_steps and n < self.pndm_order:
            raise ValueError(
                f"num_inference_steps={n} is too small for the Runge-Kutta warm-up, which needs at least "
                f"{self.pndm_order} steps; use num_inference_steps >= {self.pndm_order} or skip_prk_steps=True"
            )
        self.num_inference_steps = n
        descending = spaced_timesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps, cfg.steps_offset)
        self._timesteps = descending[::-1].copy()
        if cfg.skip_prk_steps:
            # The first interval is taken twice (predictor, then corrector), so its end repeats.
            self.prk_timesteps = np.array([], dtype=np.int64)
            self.plms_timesteps = np.concatenate([descending[:2], descending[1:]])
        else:
            # Each of the three top intervals [lo, hi] is evaluated at hi, twice at lo + half, and at lo.
            half = cfg.num_train_timesteps // n // 2
            prk = []
            for hi, lo in zip(descending[:3], descending[1:4]):
                prk += [hi, lo + half, lo + half, lo]
            self.prk_timesteps = np.asarray(prk, dtype=np.int64)
            self.plms_timesteps = descending[3:].copy()
        schedule = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self._schedule_host = schedule
        self.timesteps = torch.from_numpy(schedule.copy()).to(device)
        self._reset_state()

    def scale_model_input(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """PNDM feeds the model the sample unchanged."""
        return sample

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the loop at ``timesteps[begin_index]``: the start of a step, not the middle of one.

        Inside the Runge-Kutta warm-up a step is four entries; with ``skip_prk_steps`` the second
        entry is the corrector of the first interval.
        """
        begin_index = check_begin_index(begin_index)
        prk = len(self.prk_timesteps) if self.prk_timesteps is not None else 0
        if (begin_index < prk and begin_index % 4) or (self.config.skip_prk_steps and begin_index == 1):
            raise ValueError(
                f"begin_index={begin_index} falls inside a step of PNDMScheduler's schedule; start at 0, at a "
                f"multiple of 4 below {prk} (the Runge-Kutta warm-up) or at {max(prk, 2)} or later"
            )
        super().set_begin_index(begin_index)

    @property
    def _position(self) -> int:
        """Where this call is in ``timesteps``."""
        return (self._begin_index or 0) + self.counter

    def _timestep_value(self, timestep: Any) -> int:
        value = host_scalar(timestep)
        if value is None:
            # An accelerator tensor: the schedule entry for this call, read from the host copy.
            position = self._position
            if position >= len(self._schedule_host):
                raise ValueError(
                    f"step called at position {position} of a schedule of {len(self._schedule_host)} timesteps; "
                    "call set_timesteps again"
                )
            value = self._schedule_host[position]
        return int(value)

    def _stride(self) -> int:
        return self.config.num_train_timesteps // self.num_inference_steps

    # ------------------------------------------------------------------ stepping
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One PRK or PLMS step, depending on how far the loop has got."""
        self._require_timesteps()
        if not self.config.skip_prk_steps and self._position < len(self.prk_timesteps):
            return self.step_prk(model_output, timestep, sample, return_dict=return_dict)
        return self.step_plms(model_output, timestep, sample, return_dict=return_dict)

    def step_prk(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Pseudo Runge-Kutta: one of the four evaluations of the current interval."""
        self._require_timesteps()
        position = self._position
        stage = position % 4
        # Stages 0 and 2 target the midpoint, stages 1 and 3 the end of the interval.
        target = self._timestep_value(timestep) - (0 if position % 2 else self._stride() // 2)
        start = int(self.prk_timesteps[position - stage])
        if stage == 0:
            self.cur_model_output = self.cur_model_output + 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif stage in (1, 2):
            self.cur_model_output = self.cur_model_output + 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        origin = self.cur_sample if self.cur_sample is not None else sample
        prev_sample = self._transfer(origin, start, target, model_output)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)

    def step_plms(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Pseudo linear multistep with the Adams-Bashforth blend of past estimates."""
        self._require_timesteps()
        position = self._position
        if not self.config.skip_prk_steps and position < len(self.prk_timesteps):
            raise ValueError(
                f"step_plms called at position {position}, inside the 12 Runge-Kutta warm-up steps (or use "
                "skip_prk_steps=True); call step for every entry of scheduler.timesteps, in order"
            )
        t = self._timestep_value(timestep)
        stride = self._stride()
        if position == 1:
            # Corrector pass over the first interval: the timestep given is its end.
            start, target = t + stride, t
            estimate = (model_output + self.ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        else:
            start, target = t, t - stride
            self.ets = self.ets[-3:] + [model_output]
            estimate = adams_bashforth(self.ets)
            if len(self.ets) == 1 and position == 0:
                self.cur_sample = sample
        prev_sample = self._transfer(sample, start, target, estimate)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)

    def _transfer(self, sample: torch.Tensor, t: int, prev_t: int, eps: torch.Tensor) -> torch.Tensor:
        """The transfer map ``phi(x_t, eps, t, t - delta)`` of PNDM eq. 9 (a DDIM step written in one fraction)."""
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t, b_prev = 1 - a_t, 1 - a_prev
        if self.config.prediction_type == "v_prediction":
            eps = a_t**0.5 * eps + b_t**0.5 * sample
        denominator = a_t * b_prev**0.5 + (a_t * b_t * a_prev) ** 0.5
        return (a_prev / a_t) ** 0.5 * sample - (a_prev - a_t) * eps / denominator
