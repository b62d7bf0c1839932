"""DEIS multistep scheduler (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with
Exponential Integrator", the log-rho variant of section 4).

The noise prediction is extrapolated with a Lagrange polynomial in ``log rho``
(``rho = sigma_t / alpha_t``) through the last ``k`` outputs and integrated exactly against
``d rho``; order 1 is DDIM.  Grid construction and model-output conversion are the DPM-Solver
ones (:mod:`kernel_sched_dpmsolver`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerOutput
from kernel_sched_common import KARRAS_COMPATIBLES, check_choice, validate_num_inference_steps
from kernel_sched_dpmsolver.discrete import (
    DiscreteSolverBase,
    check_solver_order,
    dpm_timesteps,
    resolve_alias,
)
from kernel_sched_dpmsolver.solver_math import first_order_update, multistep_order


def _log(x: torch.Tensor) -> torch.Tensor:
    # numpy's float32 log: bit-identical to the reference implementation, host-only
    return torch.tensor(np.log(x.detach().numpy()))


def _lagrange_integral_2(t, b, c):
    """Antiderivative in rho of the Lagrange basis through ``log b``, ``log c`` (value 1 at b)."""
    lt, lb, lc = _log(t), _log(b), _log(c)
    return t * (-lc + lt - 1) / (lb - lc)


def _lagrange_integral_3(t, b, c, d):
    """Antiderivative in rho of the quadratic Lagrange basis through ``log b, log c, log d``."""
    lt, lb, lc, ld = _log(t), _log(b), _log(c), _log(d)
    numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return numerator / ((lb - lc) * (lb - ld))


def deis_coefficients(rho_t: torch.Tensor, rhos: list[torch.Tensor]) -> list[torch.Tensor]:
    """Weights of the stored noise predictions for a step from ``rhos[0]`` to ``rho_t``.

    ``rhos`` lists the history newest first; the weight of output ``j`` is the integral of its
    Lagrange basis polynomial (in ``log rho``) from ``rhos[0]`` to ``rho_t``.
    """
    if len(rhos) == 2:
        s0, s1 = rhos
        return [
            _lagrange_integral_2(rho_t, s0, s1) - _lagrange_integral_2(s0, s0, s1),
            _lagrange_integral_2(rho_t, s1, s0) - _lagrange_integral_2(s0, s1, s0),
        ]
    s0, s1, s2 = rhos
    return [
        _lagrange_integral_3(rho_t, s0, s1, s2) - _lagrange_integral_3(s0, s0, s1, s2),
        _lagrange_integral_3(rho_t, s1, s2, s0) - _lagrange_integral_3(s0, s1, s2, s0),
        _lagrange_integral_3(rho_t, s2, s0, s1) - _lagrange_integral_3(s0, s2, s0, s1),
    ]


class DEISMultistepScheduler(DiscreteSolverBase):
    """Multistep DEIS (``algorithm_type="deis"``, ``solver_type="logrho"``), orders 1-3."""

    _compatibles = KARRAS_COMPATIBLES
    order = 1
    _round_karras_times = True

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "deis",
        solver_type: str = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ) -> None:
        # DPM-Solver / UniPC configs swap in: their ODE algorithm and solver names map to DEIS'
        algorithm_type = resolve_alias("algorithm_type", algorithm_type, ("deis",), {"dpmsolver": "deis", "dpmsolver++": "deis"})
        solver_type = resolve_alias(
            "solver_type", solver_type, ("logrho",), {k: "logrho" for k in ("midpoint", "heun", "bh1", "bh2")}
        )
        self.register_to_config(algorithm_type=algorithm_type, solver_type=solver_type)
        check_solver_order(solver_order)
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        check_choice("time_shift_type", time_shift_type, ("exponential",))
        self._build_tables(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.model_outputs = [None] * solver_order
        self.lower_order_nums = 0

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None, mu: float | None = None
    ) -> None:
        """Build the grid of ``num_inference_steps`` steps (DPM-Solver spacing and sigma options)."""
        cfg = self.config
        self._apply_mu(mu)
        n = validate_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        timesteps = dpm_timesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps, cfg.num_train_timesteps, cfg.steps_offset)
        sigmas, timesteps = self._grid_sigmas(n, timesteps)
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas or cfg.use_flow_sigmas:
            last = sigmas[-1]  # the respaced grids end by repeating their smallest sigma
        else:
            last = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        self._install_grid(np.concatenate([sigmas, [last]]), timesteps, device)
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0

    def convert_model_output(self, model_output: torch.Tensor, *args: Any, sample: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """The noise prediction DEIS extrapolates (through a thresholded x0 when asked)."""
        if sample is None:
            if len(args) > 1:
                sample = args[1]
            else:
                raise ValueError("convert_model_output needs the current sample: pass sample=...")
        alpha_t, sigma_t = self._point(self.step_index)
        x0 = self._data_prediction(model_output, sample)
        return (sample - alpha_t * x0) / sigma_t

    def deis_update(self, order: int, sample: torch.Tensor) -> torch.Tensor:
        """One DEIS step of ``order`` from the current grid point to the next."""
        i = self.step_index
        target = self._point(i + 1)
        history = [self._point(i - k) for k in range(order)]
        if order == 1:
            return first_order_update("dpmsolver", sample, self.model_outputs[-1], target, history[0])
        alpha_t, sigma_t = target
        rho_t = sigma_t / alpha_t
        rhos = [s / a for a, s in history]
        coefs = deis_coefficients(rho_t, rhos)
        acc = sample / history[0][0]
        for coef, out in zip(coefs, reversed(self.model_outputs[-order:])):
            acc = acc + coef * out
        return alpha_t * acc

    def step(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple:
        """Advance ``sample`` by one grid step."""
        self._require_grid()
        if self.step_index is None:
            self._init_step_index(timestep)
        cfg = self.config
        order = multistep_order(
            cfg.solver_order, self.lower_order_nums, self.step_index, len(self.timesteps),
            lower_order_final=cfg.lower_order_final,
        )
        converted = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = [*self.model_outputs[1:], converted]
        prev_sample = self.deis_update(order, sample)
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
