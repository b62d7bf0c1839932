"""SDE-DPM-Solver++ (Lu et al. 2022b) with EDM preconditioning and a cosine time input.

Stable Audio Open (Evans et al. 2024) trains a v-prediction model whose time input is
``c_noise(sigma) = atan(sigma) * 2 / pi`` (the angle of a cosine schedule) with EDM's
``c_in``/``c_skip``/``c_out``.  Sampling is the stochastic multistep DPM-Solver++ of
:mod:`kernel_sched_dpmsolver` with Brownian-tree noise (:mod:`kernel_sched_dpmsolver_sde`),
seeded from the generator passed to ``step``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerOutput
from kernel_sched_dpmsolver.discrete import check_solver_order, resolve_alias
from kernel_sched_dpmsolver.multistep import SOLVER_ALIASES
from kernel_sched_dpmsolver.solver_math import SOLVER_TYPES
from kernel_sched_dpmsolver_sde import BrownianTreeNoiseSampler
from kernel_sched_edm import EDMDPMSolverMultistepScheduler


class CosineDPMSolverMultistepScheduler(EDMDPMSolverMultistepScheduler):
    """Stochastic multistep DPM-Solver++ (orders 1-2) over an exponential or Karras sigma schedule."""

    _compatibles: tuple[str, ...] = ()
    order = 1

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.3,
        sigma_max: float = 500,
        sigma_data: float = 1.0,
        sigma_schedule: str = "exponential",
        num_train_timesteps: int = 1000,
        solver_order: int = 2,
        prediction_type: str = "v_prediction",
        rho: float = 7.0,
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        final_sigmas_type: str = "zero",
    ) -> None:
        solver_type = resolve_alias("solver_type", solver_type, SOLVER_TYPES, SOLVER_ALIASES)
        self.register_to_config(solver_type=solver_type)
        check_solver_order(solver_order, allowed=(1, 2))
        self._check_edm_config()
        self._install_sigmas(self._sigmas_for(torch.linspace(0, 1, num_train_timesteps)), 0.0, None)
        self.num_inference_steps = None
        self.model_outputs = [None] * solver_order
        self.lower_order_nums = 0
        self.noise_sampler = None

    def _algorithm_type(self) -> str:
        return "sde-dpmsolver++"

    def precondition_noise(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """``c_noise(sigma) = atan(sigma) / (pi / 2)``: the cosine-schedule time in [0, 1)."""
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.tensor([sigma])
        return sigma.atan() / math.pi * 2

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None) -> None:
        """``num_inference_steps`` sigmas plus the final one; a fresh Brownian path on the next step."""
        super().set_timesteps(num_inference_steps, device)
        self.noise_sampler = None

    def _draw_noise(self, model_output: torch.Tensor, generator: Any) -> torch.Tensor:
        if self.noise_sampler is None:
            seed = None
            if generator is not None:
                seed = [g.initial_seed() for g in generator] if isinstance(generator, list) else generator.initial_seed()
            self.noise_sampler = BrownianTreeNoiseSampler(
                model_output, sigma_min=self.config.sigma_min, sigma_max=self.config.sigma_max, seed=seed
            )
        i = self.step_index
        return self.noise_sampler(self.sigmas[i], self.sigmas[i + 1]).to(model_output.device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Advance ``sample`` by one stochastic grid step (Brownian noise seeded from ``generator``)."""
        return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
