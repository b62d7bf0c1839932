"""Singlestep DPM-Solver and DPM-Solver++ (Lu et al. 2022, Alg. 1; Lu et al. 2022b, Alg. 1)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerOutput, randn_tensor
from kernel_sched_common import KARRAS_COMPATIBLES, check_choice, validate_custom_schedule, validate_num_inference_steps

from .multistep import ALGORITHM_ALIASES, SOLVER_ALIASES, VARIANCE_TYPES, DPMSolverMultistepScheduler
from .discrete import check_solver_order, resolve_alias
from .solver_math import FINAL_SIGMAS_TYPES, SOLVER_TYPES, singlestep_update

logger = logging.getLogger(__name__)

SINGLESTEP_ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")


class DPMSolverSinglestepScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver that spends ``k`` model evaluations inside each order-``k`` macro step.

    Intermediate evaluations are not reused across macro steps (unlike the multistep
    variant); the pattern of orders comes from :meth:`get_order_list`.
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 1
    _float32_solve = False
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
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ) -> None:
        resolve_alias("algorithm_type", algorithm_type, SINGLESTEP_ALGORITHMS, ALGORITHM_ALIASES)
        self._validate_solver_options(algorithm_type, solver_type, solver_order, final_sigmas_type)
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("time_shift_type", time_shift_type, ("exponential",))
        self._build_tables(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.model_outputs = [None] * solver_order
        self.sample = None
        self.order_list = self.get_order_list(num_train_timesteps)

    def get_order_list(self, num_inference_steps: int) -> list[int]:
        """Order of each step: repeating ``1, 2, (3)`` macro steps, lower orders at the end."""
        steps, order = num_inference_steps, self.config.solver_order
        cycle = list(range(1, order + 1))
        full, rest = divmod(steps, order)
        if self.config.lower_order_final:
            if order == 1:
                orders = [1] * steps
            elif rest == 0:
                # the last macro step is split into lower orders
                orders = cycle * (full - 1) + ([1, 2] if order == 3 else []) + [1] + ([] if order == 3 else [1])
            else:
                orders = cycle * full + cycle[:rest]
        else:
            orders = cycle * full
        if self.config.final_sigmas_type == "zero" and orders:
            orders[-1] = 1
        return orders

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        mu: float | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Build the grid (``linspace`` spacing) or use custom descending ``timesteps``."""
        cfg = self.config
        self._apply_mu(mu)
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps to set_timesteps")
        if timesteps is not None:
            validate_custom_schedule(timesteps=timesteps)
            for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
                if cfg.get(flag):
                    raise ValueError(f"custom timesteps cannot be combined with {flag}=True")
            timesteps = np.array(timesteps).astype(np.int64)
            num_inference_steps = len(timesteps)
        else:
            num_inference_steps = validate_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
            clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped))
            timesteps = (
                np.linspace(0, cfg.num_train_timesteps - 1 - clipped, num_inference_steps + 1)
                .round()[::-1][:-1].copy().astype(np.int64)
            )
        sigmas, timesteps = self._grid_sigmas(num_inference_steps, timesteps)
        if cfg.final_sigmas_type == "sigma_min":
            last = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        else:
            last = 0.0
        self._install_grid(np.concatenate([sigmas, [last]]), timesteps, device)
        self.num_inference_steps = num_inference_steps
        self.model_outputs = [None] * cfg.solver_order
        self.sample = None
        # An uneven step count, or a final step onto sigma = 0, needs a lower-order ending;
        # like Diffusers, switch it on for good and say so.
        if not cfg.lower_order_final and num_inference_steps % cfg.solver_order != 0:
            logger.warning(
                "num_inference_steps=%d is not a multiple of solver_order=%d: setting lower_order_final=True",
                num_inference_steps, cfg.solver_order,
            )
            self.register_to_config(lower_order_final=True)
        if not self.config.lower_order_final and cfg.final_sigmas_type == "zero":
            logger.warning("final_sigmas_type='zero' needs lower_order_final=True: setting it")
            self.register_to_config(lower_order_final=True)
        self.order_list = self.get_order_list(num_inference_steps)

    def singlestep_dpm_solver_update(
        self, model_output_list: list[torch.Tensor], *args: Any, sample: torch.Tensor | None = None,
        order: int | None = None, noise: torch.Tensor | None = None, **kwargs: Any,
    ) -> torch.Tensor:
        """One update of the given ``order`` from the start of the current macro step."""
        if sample is None or order is None:
            raise ValueError("singlestep_dpm_solver_update needs sample=... and order=...")
        check_choice("order", order, (1, 2, 3))
        i = self.step_index
        points = [self._point(i + 1)] + [self._point(i - k) for k in range(order)]
        return singlestep_update(
            self.config.algorithm_type, self.config.solver_type, sample, model_output_list, points, noise
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Advance by one (sub)step of the current macro step."""
        self._require_grid()
        if self.step_index is None:
            self._init_step_index(timestep)
        converted = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = [*self.model_outputs[1:], converted]
        noise = None
        if self.config.algorithm_type == "sde-dpmsolver++":
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
        order = self.order_list[self.step_index]
        while self.model_outputs[-order] is None:
            order -= 1
        if order == 1:
            self.sample = sample  # start of a new macro step
        prev_sample = self.singlestep_dpm_solver_update(self.model_outputs, sample=self.sample, order=order, noise=noise)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
