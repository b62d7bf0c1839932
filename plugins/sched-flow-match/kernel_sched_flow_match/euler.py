"""Euler sampler for flow-matching models (SD3, Flux, AuraFlow, LTX ...).

The model predicts the velocity ``v = noise - x0`` of the straight path
``x_sigma = (1 - sigma) x0 + sigma noise`` (Lipman et al. 2023, "Flow Matching for
Generative Modeling"; Liu et al. 2023, rectified flow).  One step is the explicit Euler
update ``x_next = x + (sigma_next - sigma) v``; with ``stochastic_sampling`` the sample is
instead re-noised from the predicted ``x0`` at ``sigma_next``.

Schedules: a static shift (Esser et al. 2024, SD3 eq. 23), a resolution-dependent shift
``mu`` (exponential, as in Flux, or linear), an optional stretch so the schedule ends at
``shift_terminal`` (LTX-Video), and optional Karras / exponential / beta respacing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.outputs import BaseOutput
from kernel.scheduling import randn_tensor
from kernel_sched_common import (
    beta_sigmas,
    check_choice,
    check_sigma_options,
    exponential_sigmas,
    karras_sigmas,
    validate_num_inference_steps,
)
from kernel_sched_flow_match.common import (
    FlowMatchSchedulerBase,
    TimeShiftMixin,
    reject_integer_timestep,
    shift_sigmas,
)

TIME_SHIFT_TYPES = ("exponential", "linear")


@dataclasses.dataclass
class FlowMatchEulerDiscreteSchedulerOutput(BaseOutput):
    """prev_sample: the sample at the next sigma."""

    prev_sample: torch.Tensor


class FlowMatchEulerDiscreteScheduler(TimeShiftMixin, FlowMatchSchedulerBase):
    """Euler integration of the flow-matching ODE; config keys as Diffusers'."""

    _compatibles = ()
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
    ) -> None:
        check_sigma_options(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        check_choice("time_shift_type", time_shift_type, TIME_SHIFT_TYPES)
        if shift_terminal is not None and not 0 <= shift_terminal < 1:
            raise ValueError(f"shift_terminal must be in [0, 1), got {shift_terminal}")
        # The training grid t = N, N-1, ..., 1 as sigmas t / N (float32, like the reference).
        grid = torch.from_numpy(np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy())
        sigmas = grid / num_train_timesteps
        if not use_dynamic_shifting:
            sigmas = shift_sigmas(sigmas, shift)
        self._shift = shift
        self._set_tables(sigmas * num_train_timesteps, sigmas)
        self.sigma_min = float(sigmas[-1])
        self.sigma_max = float(sigmas[0])
        self.num_inference_steps: int | None = None
        self._reset_step_index()

    # ------------------------------------------------------------------ shift
    @property
    def shift(self) -> float:
        """The static shift in use (``set_shift`` changes it without touching the config)."""
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = shift

    def stretch_shift_to_terminal(self, t: Any) -> Any:
        """As :class:`TimeShiftMixin`'s, but a schedule ending at sigma=1 is an error, not a division by zero."""
        if float(1 - t[-1]) == 0.0:
            raise ValueError(
                "shift_terminal cannot stretch a schedule that ends at sigma=1 "
                "(use num_inference_steps >= 2 or a custom schedule ending below 1)"
            )
        return super().stretch_shift_to_terminal(t)

    # ------------------------------------------------------------------ schedule
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | np.ndarray | None = None,
        mu: float | None = None,
        timesteps: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Build the inference schedule.

        ``sigmas`` and/or ``timesteps`` give a custom schedule (same length as
        ``num_inference_steps`` when that is also given); ``mu`` is required with
        ``use_dynamic_shifting`` (see :func:`calculate_shift`).
        """
        cfg = self.config
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("mu must be passed to set_timesteps when use_dynamic_shifting=True (see calculate_shift)")
        sigmas = _as_array(sigmas, "sigmas")
        timesteps = _as_array(timesteps, "timesteps")
        if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
            raise ValueError(f"sigmas ({len(sigmas)}) and timesteps ({len(timesteps)}) must have the same length")
        if num_inference_steps is None:
            if sigmas is None and timesteps is None:
                raise ValueError("set_timesteps needs num_inference_steps, sigmas or timesteps")
            num_inference_steps = len(sigmas) if sigmas is not None else len(timesteps)
        else:
            num_inference_steps = validate_num_inference_steps(num_inference_steps)
            for name, values in (("sigmas", sigmas), ("timesteps", timesteps)):
                if values is not None and len(values) != num_inference_steps:
                    raise ValueError(
                        f"{name} has {len(values)} values but num_inference_steps={num_inference_steps}; "
                        "they must match"
                    )
        self.num_inference_steps = num_inference_steps
        custom_timesteps = timesteps is not None

        if sigmas is None:
            if timesteps is None:
                timesteps = np.linspace(
                    self._sigma_to_t(self.sigma_max), self._sigma_to_t(self.sigma_min), num_inference_steps
                )
            sigmas = timesteps / cfg.num_train_timesteps

        if cfg.use_dynamic_shifting:
            sigmas = self.time_shift(mu, 1.0, sigmas)
        else:
            sigmas = shift_sigmas(sigmas, self.shift)
        if cfg.shift_terminal:
            sigmas = self.stretch_shift_to_terminal(sigmas)
        sigmas = self._respace(sigmas, num_inference_steps)

        sigmas_t = torch.from_numpy(np.asarray(sigmas)).to(torch.float32)
        if custom_timesteps:
            timesteps_t = torch.from_numpy(timesteps).to(torch.float32)
        else:
            timesteps_t = sigmas_t * cfg.num_train_timesteps
        if cfg.invert_sigmas:
            sigmas_t = 1.0 - sigmas_t
            timesteps_t = sigmas_t * cfg.num_train_timesteps
            sigmas_t = torch.cat([sigmas_t, torch.ones(1)])
        else:
            sigmas_t = torch.cat([sigmas_t, torch.zeros(1)])
        self._set_tables(timesteps_t.to(device) if device is not None else timesteps_t, sigmas_t)
        self._reset_step_index()

    def _respace(self, sigmas: np.ndarray, n: int) -> np.ndarray:
        cfg = self.config
        if not (cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas):
            return sigmas
        lo, hi = float(sigmas[-1]), float(sigmas[0])
        if cfg.use_karras_sigmas:
            return karras_sigmas(lo, hi, n)
        if cfg.use_exponential_sigmas:
            return exponential_sigmas(lo, hi, n)
        return beta_sigmas(lo, hi, n)

    # ------------------------------------------------------------------ step
    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | None = None,
        per_token_timesteps: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> FlowMatchEulerDiscreteSchedulerOutput | tuple:
        """One Euler step ``x + (sigma_next - sigma) * v`` (or re-noising with ``stochastic_sampling``).

        ``per_token_timesteps`` (shape ``[B, tokens]``) gives each token its own current
        timestep; the next sigma per token is the largest scheduled sigma below it.
        ``s_churn``/``s_tmin``/``s_tmax``/``s_noise`` are accepted for API compatibility and unused.
        """
        self._require_timesteps()
        reject_integer_timestep(timestep, type(self).__name__)
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index + 1 >= len(self._sigma_table):
            raise ValueError(
                f"step called {self._step_index + 1} times for {self.num_inference_steps} scheduled steps; "
                "call set_timesteps again to start a new loop"
            )
        sample = sample.to(torch.float32)

        if per_token_timesteps is not None:
            token_sigma = per_token_timesteps / self.config.num_train_timesteps
            table = self.sigmas.to(token_sigma.device)[:, None, None]
            below = table < token_sigma[None] - 1e-6
            lower, _ = (below * table).max(dim=0)
            current, nxt = token_sigma[..., None], lower[..., None]
            # Per-token updates follow the reference convention dt = sigma - sigma_next.
            dt = current - nxt
        else:
            current = self._sigma_table[self._step_index]
            nxt = self._sigma_table[self._step_index + 1]
            dt = float(nxt - current)  # float32 arithmetic, then a Python scalar (no device sync)
            current, nxt = float(current), float(nxt)

        if self.config.stochastic_sampling:
            x0 = sample - current * model_output
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            prev_sample = (1.0 - nxt) * x0 + nxt * noise
        else:
            prev_sample = sample + dt * model_output

        self._step_index += 1
        if per_token_timesteps is None:
            prev_sample = prev_sample.to(model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev_sample)


def _as_array(values: Any, name: str) -> np.ndarray | None:
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values).astype(np.float32)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"custom {name} must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"custom {name} must be finite, got {arr.tolist()}")
    return arr
