"""DPM fast and DPM adaptive: DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for
Diffusion Probabilistic Model Sampling in Around 10 Steps") in the noise-prediction form, on the
variance-exploding parameterisation ``x = x0 + sigma eps`` with ``lambda = -log sigma``.

For a step ``t -> t'`` (``h = t' - t``), with ``eps_u`` the model's noise estimate at ``u``:

* DPM-Solver-1: ``x' = x - sigma(t') (e^h - 1) eps_t``  (= DDIM, Algorithm 1 of the paper);
* DPM-Solver-2 (``r1``): ``u1 = x - sigma(s1)(e^{r1 h} - 1) eps_t`` with ``s1 = t + r1 h``, then
  ``x' = x - sigma(t')(e^h - 1) eps_t - sigma(t')/(2 r1) (e^h - 1)(eps_{s1} - eps_t)``;
* DPM-Solver-3 (``r1 = 1/3, r2 = 2/3``): Algorithm 2 of the paper.

*DPM fast* spends exactly ``num_inference_steps`` model evaluations on steps uniform in lambda
from ``sigma_max`` to ``sigma_min`` with the paper's adaptive-order recipe (section 3.3): third-order
steps and one closing second/first-order step (``[3,..,3,2,1]`` when ``n`` is a multiple of 3,
else ``[3,..,3,n mod 3]``).  *DPM adaptive* executes a step plan chosen by the embedded 2/3
error controller (see :mod:`kernel_samplers_a1111.adaptive_plan` for how, and why ahead of time).
Both stop at ``sigma_min`` (the smallest training sigma), like k-diffusion, so the result keeps
that (small) noise level.  With ``eta > 0`` each step stops at the ancestral ``sigma_down`` and
adds fresh noise back up to the next planned sigma.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel_samplers_a1111.adaptive_plan import PlannedStep, _ancestral, plan_adaptive
from kernel_samplers_a1111.planned import PlannedSigmaScheduler
from kernel_sched_common import validate_num_inference_steps


def fast_orders(nfe: int) -> list[int]:
    """Orders of the DPM fast steps for an evaluation budget (Lu et al. 2022, section 3.3)."""
    m = nfe // 3 + 1
    return [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]


class _DPMSolverSteps(PlannedSigmaScheduler):
    """Executes a list of :class:`PlannedStep` with DPM-Solver-1/2/3 (one stage per model call)."""

    order = 1

    def _steps(self, n: int | None) -> list[PlannedStep]:
        raise NotImplementedError

    def _t_range(self) -> tuple[float, float]:
        lo, hi = self._sigma_range()
        return -math.log(hi), -math.log(lo)

    def _plan(self, n: int | None):
        steps = self._steps(n)
        evals, stages = [], []
        for index, st in enumerate(steps):
            h = st.t_next - st.t
            fractions = {1: (0.0,), 2: (0.0, 0.5), 3: (0.0, 1 / 3, 2 / 3)}[st.order]
            for stage, r in enumerate(fractions):
                evals.append(math.exp(-(st.t + r * h)))
                stages.append((index, stage))
        self.planned_steps = steps
        return evals, stages, math.exp(-self._t_range()[1])

    def _reset_state(self) -> None:
        self._x_start: torch.Tensor | None = None
        self._eps: list[torch.Tensor] = []

    def _starts_a_step(self, k: int) -> bool:
        return self._stages[k][1] == 0

    def _advance(self, k: int, x: torch.Tensor, denoised: torch.Tensor, generator: Any) -> torch.Tensor:
        index, stage = self._stages[k]
        st = self.planned_steps[index]
        eps = (x - denoised) / self._eval_sigmas[k]
        h = st.t_next - st.t
        sig_next = math.exp(-st.t_next)
        em1 = math.expm1(h)
        if stage == 0:
            self._x_start, self._eps = x, [eps]
        else:
            self._eps.append(eps)
        x0, e0 = self._x_start, self._eps[0]
        if st.order == 1:
            out = x0 - (sig_next * em1) * e0
        elif st.order == 2 and stage == 0:
            return x0 - (math.exp(-(st.t + 0.5 * h)) * math.expm1(0.5 * h)) * e0
        elif st.order == 2:
            out = x0 - (sig_next * em1) * e0 - (sig_next / (2 * 0.5) * em1) * (self._eps[1] - e0)
        elif stage == 0:
            r1 = 1 / 3
            return x0 - (math.exp(-(st.t + r1 * h)) * math.expm1(r1 * h)) * e0
        elif stage == 1:
            r1, r2 = 1 / 3, 2 / 3
            sig_s2 = math.exp(-(st.t + r2 * h))
            return (x0 - (sig_s2 * math.expm1(r2 * h)) * e0
                    - (sig_s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1)) * (self._eps[1] - e0))
        else:
            r2 = 2 / 3
            out = x0 - (sig_next * em1) * e0 - (sig_next / r2 * (em1 / h - 1)) * (self._eps[2] - e0)
        self._x_start, self._eps = None, []
        if st.noise > 0:
            out = out + self._noise(out, generator) * (st.noise * self.config.s_noise)
        return out


class DPMFastScheduler(_DPMSolverSteps):
    """A1111 "DPM fast": DPM-Solver with adaptive order and exactly ``num_inference_steps`` evaluations."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        eta: float = 0.0,
        s_noise: float = 1.0,
    ) -> None:
        self._setup()

    def _steps(self, n: int) -> list[PlannedStep]:
        t_start, t_end = self._t_range()
        orders = fast_orders(n)
        grid = np.linspace(t_start, t_end, len(orders) + 1)
        return [_ancestral(float(grid[i]), float(grid[i + 1]), t_end, self.config.eta, o) for i, o in enumerate(orders)]


class DPMAdaptiveScheduler(_DPMSolverSteps):
    """A1111 "DPM adaptive": DPM-Solver-3 steps chosen by an embedded-error PID controller.

    ``set_timesteps(None)`` plans by tolerance alone; ``set_timesteps(n)`` plans at most ``n``
    model evaluations (always a multiple of 3, so ``len(timesteps) <= n``).  The controller's
    options are k-diffusion's (``rtol``, ``atol``, ``h_init``, ``pcoeff``, ``icoeff``, ``dcoeff``,
    ``accept_safety``); ``plan_sigma_data`` is the data scale of the planning surrogate.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        eta: float = 0.0,
        s_noise: float = 1.0,
        rtol: float = 0.05,
        atol: float = 0.0078,
        h_init: float = 0.05,
        pcoeff: float = 0.0,
        icoeff: float = 1.0,
        dcoeff: float = 0.0,
        accept_safety: float = 0.81,
        plan_sigma_data: float = 1.0,
    ) -> None:
        for name, value in (("rtol", rtol), ("atol", atol), ("h_init", h_init), ("plan_sigma_data", plan_sigma_data)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self._setup()

    def _validate_steps(self, num_inference_steps: Any) -> int | None:
        if num_inference_steps is None:
            return None
        n = validate_num_inference_steps(num_inference_steps)
        if n < 3:
            raise ValueError(
                f"DPM adaptive needs num_inference_steps >= 3 (each step evaluates the model 3 times), got {n}; "
                "or pass None to let the tolerances decide"
            )
        return n

    def _steps(self, n: int | None) -> list[PlannedStep]:
        cfg = self.config
        t_start, t_end = self._t_range()
        return plan_adaptive(
            t_start, t_end, n, rtol=cfg.rtol, atol=cfg.atol, h_init=cfg.h_init, pcoeff=cfg.pcoeff,
            icoeff=cfg.icoeff, dcoeff=cfg.dcoeff, accept_safety=cfg.accept_safety, eta=cfg.eta,
            sigma_data=cfg.plan_sigma_data,
        )
