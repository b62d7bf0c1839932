"""Step-size planning for DPM adaptive (Lu et al. 2022, "DPM-Solver", section 3.4 and
appendix; the embedded DPM-Solver-2/3 pair with a PI(D) step-size controller as in
k-diffusion's ``dpm_solver_adaptive``).

Why a plan: the scheduler API fixes every model evaluation when ``set_timesteps`` runs (the
pipeline loops over ``timesteps``), while an error-controlled solver picks the next step size
from the model outputs of the current one.  We therefore run the controller *ahead of time* on
a surrogate problem whose denoiser is known in closed form, Gaussian data ``x0 ~ N(0,
sigma_data^2 I)`` with ``D(x, sigma) = sigma_data^2 x / (sigma_data^2 + sigma^2)``, starting
from a fixed-seed sample, and execute the accepted steps with the real model.  The plan
concentrates steps where the local error of the 2/3 pair is large (around ``sigma ~
sigma_data`` for such data) and is reproducible (it does not depend on the user's generator).

Two modes:

* tolerance mode (``num_inference_steps=None``): the controller with the configured ``rtol``,
  ``atol``, ``h_init`` decides the number of steps, as A1111's "DPM adaptive" ignores the
  step count;
* budget mode (an int ``n``): at most ``n`` model evaluations.  The initial step is the uniform
  step that fits the budget and the tolerances are scaled by the smallest factor (found by
  bisection) whose plan fits; if even very loose tolerances do not fit, uniform third-order
  steps are used.  Each accepted step costs 3 evaluations, so the plan uses ``3 * floor(k)``
  of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kernel_samplers_a1111.planned import ancestral_step


@dataclass(frozen=True)
class PlannedStep:
    """One DPM-Solver step from ``t`` to ``t_next`` (``lambda = -log sigma``), then ``noise`` fresh noise."""

    t: float
    t_next: float
    noise: float
    order: int


class StepController:
    """PID step-size controller on the inverse error (Söderlind 2003), with an arctan limiter."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float,
                 accept_safety: float, eps: float = 1e-8) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.history: list[float] | None = None

    def propose(self, error: float) -> bool:
        """Scale ``h`` from the new error; return whether the step that produced it is accepted."""
        inv = 1.0 / (error + self.eps)
        if self.history is None:
            self.history = [inv, inv, inv]
        self.history[0] = inv
        factor = self.history[0] ** self.b1 * self.history[1] ** self.b2 * self.history[2] ** self.b3
        factor = 1 + math.atan(factor - 1)  # limiter: smooth, and at most ~2.57x growth per step
        accepted = factor >= self.accept_safety
        if accepted:
            self.history[2], self.history[1] = self.history[1], self.history[0]
        self.h *= factor
        return accepted


class GaussianSurrogate:
    """The exact eps-prediction of Gaussian data ``N(0, sd^2)``: ``eps(x, sigma) = sigma x / (sd^2 + sigma^2)``."""

    def __init__(self, sigma_data: float) -> None:
        self.var = sigma_data**2

    def eps(self, x: np.ndarray, t: float) -> np.ndarray:
        sigma = math.exp(-t)
        return sigma * x / (self.var + sigma**2)

    def solver_pair(self, x: np.ndarray, s: float, t: float) -> tuple[np.ndarray, np.ndarray]:
        """DPM-Solver-2 (r1 = 1/3) and DPM-Solver-3 (r1 = 1/3, r2 = 2/3) from ``s`` to ``t``; 3 evaluations."""
        h = t - s
        r1, r2 = 1 / 3, 2 / 3
        sig_t = math.exp(-t)
        e0 = self.eps(x, s)
        s1, s2 = s + r1 * h, s + r2 * h
        u1 = x - math.exp(-s1) * math.expm1(r1 * h) * e0
        e1 = self.eps(u1, s1)
        low = x - sig_t * math.expm1(h) * e0 - sig_t / (2 * r1) * math.expm1(h) * (e1 - e0)
        u2 = (x - math.exp(-s2) * math.expm1(r2 * h) * e0
              - math.exp(-s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (e1 - e0))
        e2 = self.eps(u2, s2)
        high = x - sig_t * math.expm1(h) * e0 - sig_t / r2 * (math.expm1(h) / h - 1) * (e2 - e0)
        return low, high


def run_controller(
    t_start: float, t_end: float, *, rtol: float, atol: float, h_init: float, pcoeff: float, icoeff: float,
    dcoeff: float, accept_safety: float, eta: float, sigma_data: float, max_steps: int | None,
    samples: int = 512, max_attempts: int = 100_000,
) -> list[PlannedStep] | None:
    """Accepted steps of the adaptive solver on the surrogate; ``None`` if more than ``max_steps``."""
    rng = np.random.default_rng(0)
    surrogate = GaussianSurrogate(sigma_data)
    x = rng.standard_normal(samples) * sigma_data + rng.standard_normal(samples) * math.exp(-t_start)
    x_prev = x
    controller = StepController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else 3, accept_safety)
    s, steps = t_start, []
    for _ in range(max_attempts):
        if s >= t_end - 1e-5:
            return steps
        t = min(t_end, s + controller.h)
        if eta:
            down, _ = ancestral_step(math.exp(-s), math.exp(-t), eta)
            t_det = min(t_end, -math.log(down)) if down > 0 else t_end
            noise = math.sqrt(max(math.exp(-2 * t) - math.exp(-2 * t_det), 0.0))
        else:
            t_det, noise = t, 0.0
        low, high = surrogate.solver_pair(x, s, t_det)
        delta = np.maximum(atol, rtol * np.maximum(np.abs(low), np.abs(x_prev)))
        error = float(np.linalg.norm((low - high) / delta) / math.sqrt(samples))
        if controller.propose(error):
            steps.append(PlannedStep(s, t_det, noise, 3))
            if max_steps is not None and len(steps) > max_steps:
                return None
            x_prev = low
            x = high + noise * rng.standard_normal(samples)
            s = t
    raise RuntimeError("DPM adaptive planning did not finish; loosen rtol/atol")


def uniform_steps(t_start: float, t_end: float, count: int, eta: float) -> list[PlannedStep]:
    """``count`` third-order steps evenly spaced in ``lambda`` (fallback for tiny budgets)."""
    grid = np.linspace(t_start, t_end, count + 1)
    return [_ancestral(float(a), float(b), t_end, eta, 3) for a, b in zip(grid[:-1], grid[1:])]


def _ancestral(t: float, t_next: float, t_end: float, eta: float, order: int) -> PlannedStep:
    if not eta:
        return PlannedStep(t, t_next, 0.0, order)
    down, _ = ancestral_step(math.exp(-t), math.exp(-t_next), eta)
    t_det = min(t_end, -math.log(down)) if down > 0 else t_end
    return PlannedStep(t, t_det, math.sqrt(max(math.exp(-2 * t_next) - math.exp(-2 * t_det), 0.0)), order)


def plan_adaptive(t_start: float, t_end: float, budget: int | None, **options: float) -> list[PlannedStep]:
    """The step plan in tolerance mode (``budget=None``) or budget mode (at most ``budget`` evaluations)."""
    if budget is None:
        return run_controller(t_start, t_end, max_steps=None, **options)
    max_steps = budget // 3
    opts = dict(options)
    opts["h_init"] = (t_end - t_start) / max_steps
    rtol, atol = opts.pop("rtol"), opts.pop("atol")

    def attempt(log_scale: float) -> list[PlannedStep] | None:
        k = math.exp(log_scale)
        return run_controller(t_start, t_end, rtol=rtol * k, atol=atol * k, max_steps=max_steps, **opts)

    lo, hi = math.log(1e-6), math.log(1e6)
    best = attempt(hi)
    if best is None:
        return uniform_steps(t_start, t_end, max_steps, options["eta"])
    for _ in range(24):
        mid = 0.5 * (lo + hi)
        found = attempt(mid)
        if found is None:
            lo = mid
        else:
            hi, best = mid, found
    return best
