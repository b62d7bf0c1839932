"""DPM-Solver++ in EDM form (Lu et al. 2022b on the Karras et al. 2022 VE parameterisation).

With ``alpha = 1`` and ``sigma`` the EDM noise level, ``lambda = -log(sigma)`` and the shared
multistep updates of :mod:`kernel_sched_dpmsolver.solver_math` apply unchanged to the
preconditioned denoiser output.
"""

from __future__ import annotations

from typing import Any

import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerOutput, randn_tensor
from kernel_sched_common import threshold_sample, validate_num_inference_steps
from kernel_sched_dpmsolver.discrete import check_solver_order, resolve_alias
from kernel_sched_dpmsolver.multistep import SOLVER_ALIASES
from kernel_sched_dpmsolver.solver_math import SOLVER_TYPES, multistep_order, multistep_update, ve_alpha_sigma

from .preconditioning import EDMPreconditioning


class EDMDPMSolverMultistepScheduler(EDMPreconditioning):
    """Multistep DPM-Solver++ (ODE or SDE) over an EDM sigma schedule."""

    _compatibles: tuple[str, ...] = ()
    order = 1
    _algorithms = ("dpmsolver++", "sde-dpmsolver++")

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        sigma_schedule: str = "karras",
        num_train_timesteps: int = 1000,
        prediction_type: str = "epsilon",
        rho: float = 7.0,
        solver_order: int = 2,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        final_sigmas_type: str = "zero",
    ):
        algorithm_type = resolve_alias("algorithm_type", algorithm_type, self._algorithms, {"deis": "dpmsolver++"})
        solver_type = resolve_alias("solver_type", solver_type, SOLVER_TYPES, SOLVER_ALIASES)
        self.register_to_config(algorithm_type=algorithm_type, solver_type=solver_type)
        check_solver_order(solver_order)
        self._check_edm_config()
        sigmas = self._sigmas_for(torch.linspace(0, 1, num_train_timesteps))
        self._install_sigmas(sigmas, 0.0, None)
        self.num_inference_steps = None
        self.model_outputs = [None] * solver_order
        self.lower_order_nums = 0

    def set_timesteps(self, num_inference_steps: int = None, device: str | torch.device | None = None) -> None:
        """``num_inference_steps`` sigmas from the schedule plus the final one."""
        n = validate_num_inference_steps(num_inference_steps)
        self.num_inference_steps = n
        sigmas = self._sigmas_for(torch.linspace(0, 1, n))
        last = self.config.sigma_min if self.config.final_sigmas_type == "sigma_min" else 0.0
        self._install_sigmas(sigmas, last, device)
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0

    def _sigma_to_alpha_sigma_t(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ve_alpha_sigma(sigma)

    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The (optionally thresholded) denoised estimate at the current sigma."""
        x0 = self.precondition_outputs(sample, model_output, self.sigmas[self.step_index])
        if self.config.get("thresholding", False):
            x0 = threshold_sample(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        return x0

    def _draw_noise(self, model_output: torch.Tensor, generator: Any) -> torch.Tensor | None:
        if self._algorithm_type() != "sde-dpmsolver++":
            return None
        return randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)

    def _algorithm_type(self) -> str:
        return self.config.algorithm_type

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Advance ``sample`` by one grid step."""
        if self.num_inference_steps is None:
            self._require_timesteps()
        if self.step_index is None:
            self._init_step_index(timestep)
        cfg = self.config
        order = multistep_order(
            cfg.solver_order, self.lower_order_nums, self.step_index, len(self.timesteps),
            lower_order_final=cfg.lower_order_final, euler_at_final=cfg.euler_at_final,
            final_sigma_is_zero=cfg.final_sigmas_type == "zero",
        )
        converted = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = [*self.model_outputs[1:], converted]
        noise = self._draw_noise(model_output, generator)
        i = self.step_index
        points = [ve_alpha_sigma(self.sigmas[i + 1])] + [ve_alpha_sigma(self.sigmas[i - k]) for k in range(order)]
        prev_sample = multistep_update(self._algorithm_type(), cfg.solver_type, sample, self.model_outputs, points, noise)
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
