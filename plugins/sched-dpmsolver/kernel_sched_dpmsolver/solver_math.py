"""Exponential-integrator updates of the DPM-Solver family, written once.

Every solver here integrates the diffusion ODE (or SDE) in the half-log-SNR variable
``lambda = log(alpha) - log(sigma)`` between grid points, treating the linear part exactly
and the model prediction by a low-order Taylor/Adams expansion:

* DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver ...", eq. 3.7 and Alg. 1-2)
  expands the noise prediction (``algorithm_type="dpmsolver"``);
* DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++ ...", Alg. 1-2) expands the data
  prediction (``"dpmsolver++"``);
* their SDE variants (Lu et al. 2022b, appendix; Gonzalez et al. 2023, "SEEDS") add
  Gaussian noise scaled to keep the marginals (``"sde-dpmsolver"``, ``"sde-dpmsolver++"``).

All grid quantities are 0-d CPU tensors; only the final linear combination touches
the sample, so a denoising loop on an accelerator never waits for the host.  The
coefficient arithmetic is carried out in float32 in a fixed order so that results are
reproducible bit for bit across schedulers that share it (multistep, singlestep,
inverse, EDM and cosine variants).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


# ---------------------------------------------------------------------------- grid points
def vp_alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance-preserving ``(alpha_t, sigma_t)`` from the VE-style ``sigma = sigma_t / alpha_t``."""
    alpha_t = 1 / (sigma**2 + 1) ** 0.5
    return alpha_t, sigma * alpha_t


def flow_alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified-flow interpolation ``x_t = (1 - sigma) x0 + sigma eps``."""
    return 1 - sigma, sigma


def ve_alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance-exploding (EDM) parameterisation ``x_t = x0 + sigma eps``: alpha is 1."""
    return torch.ones((), dtype=sigma.dtype), sigma


def half_log_snr(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``lambda = log(alpha) - log(sigma)`` (infinite at sigma = 0, which the updates handle)."""
    return torch.log(alpha) - torch.log(sigma)


def linear_combination(terms: Iterable[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
    """``sum_i c_i * x_i`` evaluated left to right (coefficients are 0-d tensors or numbers)."""
    out = None
    for coef, value in terms:
        if value is None:
            continue
        term = coef * value
        out = term if out is None else out + term
    return out


# ---------------------------------------------------------------------------- coefficients
@dataclass
class StepCoefficients:
    """Weights of one exponential-integrator step from anchor ``a`` to target ``t``.

    ``x``: weight of the anchor sample; ``d0``: of the prediction at the anchor; ``d1_mid`` /
    ``d1_heun``: of the first divided difference under the two second-order rules; ``d2``: of
    the second divided difference (third order); ``noise``: of the fresh Gaussian (SDE only).
    """

    x: torch.Tensor
    d0: torch.Tensor
    d1_mid: torch.Tensor
    d1_heun: torch.Tensor
    d2: torch.Tensor | None
    noise: torch.Tensor | None


def step_coefficients(
    algorithm_type: str,
    h: torch.Tensor,
    target: tuple[torch.Tensor, torch.Tensor],
    anchor: tuple[torch.Tensor, torch.Tensor],
) -> StepCoefficients:
    """Coefficients of the DPM-Solver(++)/SDE update over a step ``h = lambda_t - lambda_a``.

    With ``phi_1(h) = (e^h - 1)/h`` and friends (Lu et al. 2022b, eq. 9 and Table 1), the
    data-prediction solver reads ``x_t = sigma_t/sigma_a x_a - alpha_t (e^-h - 1) D0 + ...``
    and the noise-prediction solver ``x_t = alpha_t/alpha_a x_a - sigma_t (e^h - 1) D0 + ...``.
    """
    alpha_t, sigma_t = target
    alpha_a, sigma_a = anchor
    if algorithm_type == "dpmsolver++":
        em1 = torch.exp(-h) - 1.0  # e^{-h} - 1
        d0 = alpha_t * em1
        return StepCoefficients(
            x=sigma_t / sigma_a,
            d0=-d0,
            d1_mid=-(0.5 * d0),
            d1_heun=alpha_t * (em1 / h + 1.0),
            d2=-(alpha_t * ((em1 + h) / h**2 - 0.5)),
            noise=None,
        )
    if algorithm_type == "dpmsolver":
        ep1 = torch.exp(h) - 1.0  # e^{h} - 1
        d0 = sigma_t * ep1
        return StepCoefficients(
            x=alpha_t / alpha_a,
            d0=-d0,
            d1_mid=-(0.5 * d0),
            d1_heun=-(sigma_t * (ep1 / h - 1.0)),
            d2=-(sigma_t * ((ep1 - h) / h**2 - 0.5)),
            noise=None,
        )
    if algorithm_type == "sde-dpmsolver++":
        decay = 1.0 - torch.exp(-2.0 * h)  # 1 - e^{-2h}
        d0 = alpha_t * decay
        return StepCoefficients(
            x=sigma_t / sigma_a * torch.exp(-h),
            d0=d0,
            d1_mid=0.5 * d0,
            d1_heun=alpha_t * (decay / (-2.0 * h) + 1.0),
            d2=alpha_t * ((decay - 2.0 * h) / (2.0 * h) ** 2 - 0.5),
            noise=sigma_t * torch.sqrt(decay),
        )
    if algorithm_type == "sde-dpmsolver":
        ep1 = torch.exp(h) - 1.0
        d0 = sigma_t * ep1
        return StepCoefficients(
            x=alpha_t / alpha_a,
            d0=-(2.0 * d0),
            d1_mid=-d0,
            d1_heun=-(2.0 * (sigma_t * (ep1 / h - 1.0))),
            d2=None,  # no third-order SDE-DPM-Solver is defined
            noise=sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0),
        )
    raise ValueError(f"algorithm_type={algorithm_type!r} is not supported; accepted values: {', '.join(ALGORITHM_TYPES)}")


# ---------------------------------------------------------------------------- updates
Point = tuple[torch.Tensor, torch.Tensor]


def first_order_update(
    algorithm_type: str, sample: torch.Tensor, prediction: torch.Tensor, target: Point, anchor: Point,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM-like step (DPM-Solver-1, equal to DDIM for ``dpmsolver++``)."""
    h = half_log_snr(*target) - half_log_snr(*anchor)
    c = step_coefficients(algorithm_type, h, target, anchor)
    return linear_combination([(c.x, sample), (c.d0, prediction), (c.noise, noise)])


def multistep_update(
    algorithm_type: str,
    solver_type: str,
    sample: torch.Tensor,
    predictions: Sequence[torch.Tensor],
    points: Sequence[Point],
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multistep DPM-Solver(++) of order ``len(points) - 1`` (Lu et al. 2022b, Alg. 2).

    ``points`` = ``[target, s0, s1, (s2)]`` as ``(alpha, sigma)`` pairs, newest history first;
    ``predictions`` ends with the newest converted model output (``[..., m1, m0]``).
    """
    order = len(points) - 1
    target, s0 = points[0], points[1]
    if order == 1:
        return first_order_update(algorithm_type, sample, predictions[-1], target, s0, noise)
    lam = [half_log_snr(*p) for p in points]
    h = lam[0] - lam[1]
    c = step_coefficients(algorithm_type, h, target, s0)
    m0, m1 = predictions[-1], predictions[-2]
    r0 = (lam[1] - lam[2]) / h
    if order == 2:
        d1 = 1.0 / r0 * (m0 - m1)
        w1 = c.d1_mid if solver_type == "midpoint" else c.d1_heun
        return linear_combination([(c.x, sample), (c.d0, m0), (w1, d1), (c.noise, noise)])
    if c.d2 is None:
        raise ValueError(f"third-order updates are not defined for algorithm_type={algorithm_type!r}")
    m2 = predictions[-3]
    r1 = (lam[2] - lam[3]) / h
    d1_0 = 1.0 / r0 * (m0 - m1)
    d1_1 = 1.0 / r1 * (m1 - m2)
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = 1.0 / (r0 + r1) * (d1_0 - d1_1)
    return linear_combination([(c.x, sample), (c.d0, m0), (c.d1_heun, d1), (c.d2, d2), (c.noise, noise)])


def singlestep_update(
    algorithm_type: str,
    solver_type: str,
    sample: torch.Tensor,
    predictions: Sequence[torch.Tensor],
    points: Sequence[Point],
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Singlestep DPM-Solver(++) of order ``len(points) - 1`` (Lu et al. 2022, Alg. 1-2).

    The sample is the one at the *oldest* point (the start of the macro step): ``points`` =
    ``[target, s0, s1, (s2)]`` with ``s0`` the newest intermediate evaluation.
    """
    order = len(points) - 1
    if order == 1:
        return first_order_update(algorithm_type, sample, predictions[-1], points[0], points[1], noise)
    lam = [half_log_snr(*p) for p in points]
    anchor = points[-1]
    h = lam[0] - lam[-1]
    c = step_coefficients(algorithm_type, h, points[0], anchor)
    if order == 2:
        m0, m1 = predictions[-1], predictions[-2]
        r0 = (lam[1] - lam[2]) / h
        d1 = 1.0 / r0 * (m0 - m1)
        w1 = c.d1_mid if solver_type == "midpoint" else c.d1_heun
        return linear_combination([(c.x, sample), (c.d0, m1), (w1, d1), (c.noise, noise)])
    if c.d2 is None:
        raise ValueError(f"third-order updates are not defined for algorithm_type={algorithm_type!r}")
    m0, m1, m2 = predictions[-1], predictions[-2], predictions[-3]
    r0 = (lam[1] - lam[3]) / h
    r1 = (lam[2] - lam[3]) / h
    d1_0 = 1.0 / r1 * (m1 - m2)
    d1_1 = 1.0 / r0 * (m0 - m2)
    if solver_type == "midpoint":
        return linear_combination([(c.x, sample), (c.d0, m2), (c.d1_heun, d1_1), (c.noise, noise)])
    d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
    d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
    return linear_combination([(c.x, sample), (c.d0, m2), (c.d1_heun, d1), (c.d2, d2), (c.noise, noise)])


def multistep_order(
    solver_order: int,
    warmup_steps: int,
    step_index: int,
    num_steps: int,
    *,
    lower_order_final: bool,
    euler_at_final: bool = False,
    final_sigma_is_zero: bool = False,
) -> int:
    """Order used at ``step_index`` by the multistep solvers.

    The order ramps up as history accumulates (``warmup_steps`` outputs seen so far) and drops
    near the end of short schedules, where high-order steps are unstable (Lu et al. 2022b,
    section 5); a final step onto sigma = 0 is always first order.
    """
    last = step_index == num_steps - 1
    short = lower_order_final and num_steps < 15
    if solver_order == 1 or warmup_steps < 1 or (last and (euler_at_final or short or final_sigma_is_zero)):
        return 1
    if solver_order == 2 or warmup_steps < 2 or (step_index == num_steps - 2 and short):
        return 2
    return 3
