"""DPM-Solver-2 as k-diffusion writes it (``sample_dpm_2`` / ``sample_dpm_2_ancestral``).

Each step is a midpoint method in log sigma (Lu et al. 2022, "DPM-Solver", Algorithm 1 with
k = 2, in the form of Karras et al. 2022): an Euler half-step to the geometric midpoint
``sigma_mid = sqrt(sigma_i * sigma_next)``, a model evaluation there, and a full step from
``sigma_i`` with the midpoint slope.  The schedule interleaves the midpoint timesteps:
``[t0, t_mid0, t1, t_mid1, t2, ...]`` (``2n - 1`` entries).  The ancestral variant aims at
``sigma_down`` and adds noise of scale ``sigma_up`` after the second half.
"""

from __future__ import annotations

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerOutputWithX0, randn_tensor
from kernel_sched_common import KARRAS_COMPATIBLES, SigmaScheduler


def _midpoint_sigma_to_t(sigmas: torch.Tensor, log_sigmas: np.ndarray) -> torch.Tensor:
    """Fractional timesteps of the midpoint sigmas, by log-sigma interpolation in float32.

    Same rule as :func:`kernel_sched_common.sigma_to_t`, but kept in float32 end to end because the
    midpoint timesteps are schedule entries that callers pass back to ``step``/``add_noise`` and
    must equal Diffusers' (which builds them with float32 tensors) bit for bit.
    """
    log_sigma = torch.from_numpy(np.log(np.maximum(sigmas.numpy(), np.float32(1e-10))))
    table = torch.from_numpy(log_sigmas)
    above = (log_sigma[None, :] - table[:, None]) >= 0
    low = above.cumsum(dim=0).argmax(dim=0).clamp(max=table.shape[0] - 2)
    high = low + 1
    w = ((table[low] - log_sigma) / (table[low] - table[high])).clamp(0, 1)
    return (1 - w) * low + w * high


def _twice_inner(values: torch.Tensor) -> torch.Tensor:
    """``[v0, v1, v1, v2, v2, ..., vN, vN, vN]``: the per-evaluation layout of the tables."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


def _log_midpoint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.log().lerp(b.log(), 0.5).exp()


class _KDPM2Base(SigmaScheduler):
    """Schedule construction and the two-stage state shared by both variants."""

    _compatibles = KARRAS_COMPATIBLES
    order = 2

    def _setup(self, config) -> None:
        self._setup_sigma_tables(("epsilon", "v_prediction"))
        self.set_timesteps(config.num_train_timesteps, None, config.num_train_timesteps)

    def _midpoint_sigmas(self, sigmas: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _midpoint_timesteps(self, mids: torch.Tensor) -> torch.Tensor:
        """Timesteps of the midpoints that are model evaluations, one per inner step."""
        raise NotImplementedError

    def set_timesteps(
        self,
        num_inference_steps: int,
        device: str | torch.device | None = None,
        num_train_timesteps: int | None = None,
    ) -> None:
        """Build ``n`` steps (``2n - 1`` model evaluations) with their midpoint sigmas and timesteps."""
        n = self._check_sigma_set_timesteps(num_inference_steps)
        self.num_inference_steps = n
        steps, spaced, log_sigmas = self._spaced_sigmas(n, num_train_timesteps)
        if self._option("use_karras_sigmas"):
            steps = steps.round()  # Diffusers rounds Karras timesteps for these two solvers
        self.log_sigmas = torch.from_numpy(log_sigmas)
        sigmas = torch.from_numpy(np.concatenate([spaced, [0.0]]).astype(np.float32))
        mids = self._midpoint_sigmas(sigmas)
        self.sigmas_interpol = _twice_inner(mids)
        steps = torch.from_numpy(np.asarray(steps))
        mid_steps = _midpoint_sigma_to_t(mids, log_sigmas).to(steps.dtype)
        inner = torch.stack((self._midpoint_timesteps(mid_steps), steps[1:]), dim=-1).flatten()
        self._publish(torch.cat([steps[:1], inner]), _twice_inner(sigmas), device)
        self._first_half_sample = None

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is the first (Euler-to-midpoint) half."""
        return self._first_half_sample is None


class KDPM2DiscreteScheduler(_KDPM2Base):
    """Deterministic DPM-Solver-2: midpoint ``sqrt(sigma_i sigma_{i+1})``."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._setup(self.config)

    def _midpoint_sigmas(self, sigmas: torch.Tensor) -> torch.Tensor:
        return _log_midpoint(sigmas, sigmas.roll(1))

    def _midpoint_timesteps(self, mid_steps: torch.Tensor) -> torch.Tensor:
        return mid_steps[1:-1]

    def _input_sigma(self) -> torch.Tensor:
        table = self.sigmas if self.state_in_first_order else self.sigmas_interpol
        return table[self._step_index]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ):
        """First half: Euler to the midpoint.  Second half: full step with the midpoint slope."""
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if self.state_in_first_order:
            sigma, sigma_mid, sigma_next = self.sigmas[i], self.sigmas_interpol[i + 1], self.sigmas[i + 1]
            x0 = self._x0_from_sigma(model_output, sample, sigma)
            slope, dt = (sample - x0) / sigma, sigma_mid - sigma
            self._first_half_sample = sample
        else:
            sigma, sigma_mid, sigma_next = self.sigmas[i - 1], self.sigmas_interpol[i], self.sigmas[i]
            x0 = self._x0_from_sigma(model_output, sample, sigma_mid)
            slope, dt = (sample - x0) / sigma_mid, sigma_next - sigma
            sample, self._first_half_sample = self._first_half_sample, None
        self._step_index = i + 1
        prev_sample = sample + slope * dt
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutputWithX0(prev_sample=prev_sample, pred_original_sample=x0)


class KDPM2AncestralDiscreteScheduler(_KDPM2Base):
    """Ancestral DPM-Solver-2: midpoint between ``sigma_i`` and ``sigma_down``, then ``sigma_up`` noise."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._setup(self.config)

    def _midpoint_sigmas(self, sigmas: torch.Tensor) -> torch.Tensor:
        following = sigmas.roll(-1)
        following[-1] = 0.0
        up = (following**2 * (sigmas**2 - following**2) / sigmas**2) ** 0.5
        down = (following**2 - up**2) ** 0.5
        down[-1] = 0.0
        mids = _log_midpoint(sigmas, down)
        mids[-2:] = 0.0
        self.sigmas_up, self.sigmas_down = _twice_inner(up), _twice_inner(down)
        return mids

    def _midpoint_timesteps(self, mid_steps: torch.Tensor) -> torch.Tensor:
        return mid_steps[:-2]

    def _input_sigma(self) -> torch.Tensor:
        if self.state_in_first_order:
            return self.sigmas[self._step_index]
        return self.sigmas_interpol[self._step_index - 1]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """First half: Euler to the midpoint.  Second half: to ``sigma_down`` plus ``sigma_up`` noise."""
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if self.state_in_first_order:
            sigma, sigma_mid = self.sigmas[i], self.sigmas_interpol[i]
            x0 = self._x0_from_sigma(model_output, sample, sigma)
            prev_sample = sample + (sample - x0) / sigma * (sigma_mid - sigma)
            self._first_half_sample = sample
        else:
            sigma, sigma_mid = self.sigmas[i - 1], self.sigmas_interpol[i - 1]
            sigma_up, sigma_down = self.sigmas_up[i - 1], self.sigmas_down[i - 1]
            x0 = self._x0_from_sigma(model_output, sample, sigma_mid)
            slope = (sample - x0) / sigma_mid
            prev_sample = self._first_half_sample + slope * (sigma_down - sigma)
            self._first_half_sample = None
            fresh = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample + fresh * sigma_up
        self._step_index = i + 1
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutputWithX0(prev_sample=prev_sample, pred_original_sample=x0)
