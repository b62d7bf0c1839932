"""UniPC multistep scheduler (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework
for Fast Sampling of Diffusion Models").

Each step runs the UniP predictor of order ``p`` (Alg. 2) and, on the next call, the UniC
corrector (Alg. 1) that reuses the fresh model output at the predicted point, raising the
order by one at no extra model evaluation.  The weights solve the small linear system of
eq. 8 with ``B(h) = h`` (``bh1``) or ``B(h) = e^h - 1`` (``bh2``).  Grid construction and
prediction conversion come from :mod:`kernel_sched_dpmsolver`; every coefficient is computed
on the host, so a device loop never synchronises.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerMixin, SchedulerOutput
from kernel_sched_common import KARRAS_COMPATIBLES, check_choice, validate_custom_schedule, validate_num_inference_steps
from kernel_sched_dpmsolver.discrete import (
    DiscreteSolverBase,
    check_solver_order,
    dpm_timesteps,
    flow_shifted,
    resolve_alias,
    to_noise_prediction,
)
from kernel_sched_dpmsolver.solver_math import FINAL_SIGMAS_TYPES, half_log_snr, linear_combination
from kernel_sched_flow_match.common import TimeShiftMixin

SOLVER_TYPES = ("bh1", "bh2")
SOLVER_ALIASES = {"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}


def unipc_system(h: torch.Tensor, rks: list[torch.Tensor], predict_x0: bool, solver_type: str):
    """``(h_phi_1, B(h), R, b)`` of UniPC's order conditions (Zhao et al. 2023, eq. 8).

    ``rks`` are the relative step ratios ``r_k = (lambda_k - lambda_0) / h`` of the history,
    with the trailing 1 for the current point; ``R[i, k] = r_k^i`` and ``b_i = i! phi_{i+1}(h) / B(h)``.
    """
    hh = -h if predict_x0 else h
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if solver_type == "bh1" else torch.expm1(hh)
    ratios = torch.stack(rks)
    rows, rhs = [], []
    factorial = 1
    for i in range(1, len(rks) + 1):
        rows.append(torch.pow(ratios, i - 1))
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, torch.stack(rows), torch.stack(rhs)


class UniPCMultistepScheduler(TimeShiftMixin, DiscreteSolverBase):
    """UniPC with data (``predict_x0=True``) or noise prediction, orders 1-3 (higher allowed)."""

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
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list[int] = [],  # noqa: B006 - Diffusers' default, recorded in the config
        solver_p: SchedulerMixin = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: float | None = None,
        sigma_max: bool | None = None,
        shift_terminal: bool | None = None,
    ) -> None:
        solver_type = resolve_alias("solver_type", solver_type, SOLVER_TYPES, SOLVER_ALIASES)
        self.register_to_config(solver_type=solver_type)
        check_solver_order(solver_order, allowed=range(1, 9))
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        check_choice("time_shift_type", time_shift_type, ("exponential", "linear"))
        if shift_terminal is not None and not use_flow_sigmas:
            raise ValueError("shift_terminal is only supported with use_flow_sigmas=True")
        self._build_tables(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr)
        self.predict_x0 = predict_x0
        self.disable_corrector = list(disable_corrector)
        self.solver_p = solver_p
        self.model_outputs = [None] * solver_order
        self.timestep_list = [None] * solver_order
        self.lower_order_nums = 0
        self.last_sample = None
        self.this_order = None

    # ------------------------------------------------------------------ schedule
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """Build the grid; custom descending ``sigmas`` and ``mu`` apply to flow sigmas."""
        cfg = self.config
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("mu must be passed to set_timesteps when use_dynamic_shifting=True")
        if sigmas is not None:
            if not cfg.use_flow_sigmas:
                raise ValueError("custom sigmas are only supported with use_flow_sigmas=True")
            validate_custom_schedule(sigmas=sigmas, descending="sigmas")
            sigmas = np.asarray(sigmas.cpu() if isinstance(sigmas, torch.Tensor) else sigmas, dtype=np.float64).copy()
            num_inference_steps = len(sigmas)
        n = validate_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        N = cfg.num_train_timesteps
        timesteps = dpm_timesteps(cfg.timestep_spacing, n, N, N, cfg.steps_offset)
        respaced = cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas
        if respaced:
            source = sigmas if sigmas is not None else self._train_sigmas()[0]
            log_source = np.log(source)
            grid = self._respaced(n, np.flip(source).copy())
            if cfg.use_karras_sigmas and cfg.use_flow_sigmas:
                grid = grid / (grid + 1)
                timesteps = (grid * N).copy()
            else:
                timesteps = self._times_of(grid, log_source)
                if cfg.use_karras_sigmas:
                    timesteps = timesteps.round()
            last = grid[-1] if cfg.final_sigmas_type == "sigma_min" else 0
        elif cfg.use_flow_sigmas:
            grid = sigmas if sigmas is not None else np.linspace(1, 1 / N, n + 1)[:-1]
            grid = self.time_shift(mu, 1.0, grid) if cfg.use_dynamic_shifting else flow_shifted(grid, cfg.flow_shift)
            if cfg.shift_terminal:
                grid = self.stretch_shift_to_terminal(grid)
            if np.fabs(grid[0] - 1) < 1e-6:
                grid[0] -= 1e-6  # sigma = 1 would make lambda infinite
            timesteps = (grid * N).copy()
            last = grid[-1] if cfg.final_sigmas_type == "sigma_min" else 0
        else:
            train = self._train_sigmas()[0]
            grid = np.interp(timesteps, np.arange(0, len(train)), train)
            last = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
            last = last if cfg.final_sigmas_type == "sigma_min" else 0
        self._install_grid(np.concatenate([grid, [last]]), timesteps, device)
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0
        self.last_sample = None
        if self.solver_p:
            self.solver_p.set_timesteps(self.num_inference_steps, device=device)

    # ------------------------------------------------------------------ model output
    def convert_model_output(self, model_output: torch.Tensor, *args: Any, sample: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """x0 prediction (``predict_x0``) or noise prediction for the solver."""
        if sample is None:
            if len(args) > 1:
                sample = args[1]
            else:
                raise ValueError("convert_model_output needs the current sample: pass sample=...")
        if self.predict_x0:
            return self._data_prediction(model_output, sample)
        alpha_t, sigma_t = self._point(self.step_index)
        return to_noise_prediction(self.config.prediction_type, model_output, sample, alpha_t, sigma_t)

    def _history(self, current: int, first_past: int, order: int):
        """``h``, the ratios ``r_k`` and the divided differences ``(m_k - m_0) / r_k`` for the update."""
        target = self._point(current + 1 if first_past == 1 else current)
        base = self._point(current if first_past == 1 else current - 1)
        lam_base = half_log_snr(*base)
        h = half_log_snr(*target) - lam_base
        m0 = self.model_outputs[-1]
        rks, diffs = [], []
        for k in range(1, order):
            past = self._point(current - (k + first_past - 1))
            rk = (half_log_snr(*past) - lam_base) / h
            rks.append(rk)
            diffs.append((self.model_outputs[-(k + 1)] - m0) / rk)
        rks.append(torch.ones((), dtype=h.dtype))
        return target, base, h, m0, rks, diffs

    def _anchor_terms(self, target, base, h_phi_1, sample, m0):
        (alpha_t, sigma_t), (alpha_s, sigma_s) = target, base
        if self.predict_x0:
            return sigma_t / sigma_s * sample - alpha_t * h_phi_1 * m0, alpha_t
        return alpha_t / alpha_s * sample - sigma_t * h_phi_1 * m0, sigma_t

    def multistep_uni_p_bh_update(
        self, model_output: torch.Tensor, *args: Any, sample: torch.Tensor | None = None, order: int | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """UniP predictor of ``order`` from the current grid point to the next."""
        if sample is None or order is None:
            raise ValueError("multistep_uni_p_bh_update needs sample=... and order=...")
        if self.solver_p:
            return self.solver_p.step(model_output, self.timestep_list[-1], sample).prev_sample
        target, base, h, m0, rks, diffs = self._history(self.step_index, 1, order)
        h_phi_1, b_h, R, b = unipc_system(h, rks, self.predict_x0, self.config.solver_type)
        x_t, scale = self._anchor_terms(target, base, h_phi_1, sample, m0)
        if diffs:
            rhos = torch.ones(1) * 0.5 if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
            correction = linear_combination(zip(rhos.to(sample.dtype).unbind(0), diffs))
            x_t = x_t - scale * b_h * correction
        return x_t.to(sample.dtype)

    def multistep_uni_c_bh_update(
        self, this_model_output: torch.Tensor, *args: Any, last_sample: torch.Tensor | None = None,
        this_sample: torch.Tensor | None = None, order: int | None = None, **kwargs: Any,
    ) -> torch.Tensor:
        """UniC corrector: refine ``this_sample`` with the model output evaluated at it."""
        if last_sample is None or this_sample is None or order is None:
            raise ValueError("multistep_uni_c_bh_update needs last_sample=..., this_sample=... and order=...")
        target, base, h, m0, rks, diffs = self._history(self.step_index, 2, order)
        h_phi_1, b_h, R, b = unipc_system(h, rks, self.predict_x0, self.config.solver_type)
        rhos = torch.ones(1) * 0.5 if order == 1 else torch.linalg.solve(R, b)
        rhos = rhos.to(last_sample.dtype)
        x_t, scale = self._anchor_terms(target, base, h_phi_1, last_sample, m0)
        correction = rhos[-1] * (this_model_output - m0)
        if diffs:
            correction = linear_combination(zip(rhos[:-1].unbind(0), diffs)) + correction
        x_t = x_t - scale * b_h * correction
        return x_t.to(last_sample.dtype)

    # ------------------------------------------------------------------ step
    def step(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple:
        """Correct the previous prediction with this model output, then predict the next sample."""
        self._require_grid()
        if self.step_index is None:
            self._init_step_index(timestep)
        use_corrector = (
            self.step_index > 0 and self.step_index - 1 not in self.disable_corrector and self.last_sample is not None
        )
        converted = self.convert_model_output(model_output, sample=sample)
        if use_corrector:
            sample = self.multistep_uni_c_bh_update(
                this_model_output=converted, last_sample=self.last_sample, this_sample=sample, order=self.this_order
            )
        self.model_outputs = [*self.model_outputs[1:], converted]
        self.timestep_list = [*self.timestep_list[1:], timestep]
        cfg = self.config
        order = min(cfg.solver_order, len(self.timesteps) - self.step_index) if cfg.lower_order_final else cfg.solver_order
        self.this_order = min(order, self.lower_order_nums + 1)
        self.last_sample = sample
        prev_sample = self.multistep_uni_p_bh_update(model_output=model_output, sample=sample, order=self.this_order)
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
