"""Multistep DPM-Solver and DPM-Solver++ (Lu et al. 2022, 2022b), ODE and SDE variants."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerOutput, randn_tensor
from kernel_sched_common import KARRAS_COMPATIBLES, check_choice, validate_custom_schedule, validate_num_inference_steps

from .discrete import (
    DiscreteSolverBase,
    check_solver_order,
    dpm_timesteps,
    resolve_alias,
    to_noise_prediction,
)
from .solver_math import (
    ALGORITHM_TYPES,
    FINAL_SIGMAS_TYPES,
    SOLVER_TYPES,
    multistep_order,
    multistep_update,
)

#: Values other solvers use for the same keys, accepted so configs can be swapped (as Diffusers does).
ALGORITHM_ALIASES = {"deis": "dpmsolver++"}
SOLVER_ALIASES = {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"}
VARIANCE_TYPES = (None, "learned", "learned_range")


class DPMSolverMultistepScheduler(DiscreteSolverBase):
    """Fast high-order solver for diffusion ODEs/SDEs that reuses previous model outputs.

    ``algorithm_type="dpmsolver++"`` (default) expands the data prediction (Lu et al. 2022b,
    Alg. 2, recommended with guidance); ``"dpmsolver"`` the noise prediction (Lu et al. 2022);
    the ``sde-`` variants inject noise each step.  ``solver_order`` 2 suits guided sampling,
    3 unguided sampling.
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 1
    #: Solve in float32 whatever the sample dtype (noise drawn in float32 too); the singlestep and
    #: inverse solvers work in the sample's dtype instead.
    _float32_solve = True

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
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        self._validate_solver_options(algorithm_type, solver_type, solver_order, final_sigmas_type)
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("time_shift_type", time_shift_type, ("exponential",))
        self._build_tables(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        self.model_outputs = [None] * solver_order
        self.lower_order_nums = 0

    def _validate_solver_options(self, algorithm_type, solver_type, solver_order, final_sigmas_type) -> None:
        algorithm_type = resolve_alias("algorithm_type", algorithm_type, ALGORITHM_TYPES, ALGORITHM_ALIASES)
        solver_type = resolve_alias("solver_type", solver_type, SOLVER_TYPES, SOLVER_ALIASES)
        self.register_to_config(algorithm_type=algorithm_type, solver_type=solver_type)
        check_solver_order(solver_order)
        if algorithm_type == "sde-dpmsolver" and solver_order == 3:
            raise ValueError("solver_order=3 is not defined for algorithm_type='sde-dpmsolver'; accepted values: 1, 2")
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        if algorithm_type in ("dpmsolver", "sde-dpmsolver") and final_sigmas_type == "zero":
            raise ValueError(
                f"final_sigmas_type='zero' is not supported with algorithm_type={algorithm_type!r} "
                "(the noise-prediction solver divides by the final sigma); use final_sigmas_type='sigma_min'"
            )

    # ------------------------------------------------------------------ schedule
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        mu: float | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Build the solver grid: ``num_inference_steps`` spaced steps, or custom descending ``timesteps``."""
        cfg = self.config
        self._apply_mu(mu)
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps to set_timesteps")
        if timesteps is not None:
            validate_custom_schedule(timesteps=timesteps)
            for flag in ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas"):
                if cfg.get(flag):
                    raise ValueError(f"custom timesteps cannot be combined with {flag}=True")
            timesteps = np.array(timesteps).astype(np.int64)
        else:
            num_inference_steps = validate_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
            clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped))
            timesteps = dpm_timesteps(
                cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps,
                cfg.num_train_timesteps - clipped, cfg.steps_offset,
            )
        sigmas, timesteps = self._grid_sigmas(num_inference_steps, timesteps)
        if cfg.final_sigmas_type == "sigma_min":
            last = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        else:
            last = 0.0
        self._install_grid(np.concatenate([sigmas, [last]]), timesteps, device)
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0

    # ------------------------------------------------------------------ model output
    def convert_model_output(self, model_output: torch.Tensor, *args: Any, sample: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Turn the raw model output into what the solver expands: x0 (``++``) or noise."""
        if sample is None:
            if len(args) > 1:
                sample = args[1]
            else:
                raise ValueError("convert_model_output needs the current sample: pass sample=...")
        if self.step_index is None:
            raise RuntimeError("convert_model_output is called from step; call set_timesteps and step instead")
        cfg = self.config
        learned = cfg.variance_type in ("learned", "learned_range")
        if cfg.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
            if cfg.prediction_type == "epsilon" and learned:
                model_output = model_output[:, :3]
            return self._data_prediction(model_output, sample)
        # noise-prediction solvers
        if cfg.prediction_type == "epsilon" and learned:
            model_output = model_output[:, :3]
        alpha_t, sigma_t = self._point(self.step_index)
        eps = to_noise_prediction(cfg.prediction_type, model_output, sample, alpha_t, sigma_t)
        if cfg.thresholding:
            x0 = self._threshold((sample - sigma_t * eps) / alpha_t)
            eps = (sample - alpha_t * x0) / sigma_t
        return eps

    # ------------------------------------------------------------------ step
    def _draw_noise(self, model_output, generator, variance_noise) -> torch.Tensor | None:
        if not self.config.algorithm_type.startswith("sde-"):
            return None
        dtype = torch.float32 if self._float32_solve else model_output.dtype
        if variance_noise is not None:
            return variance_noise.to(model_output.device, dtype) if self._float32_solve else variance_noise
        return randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=dtype)

    def _this_order(self) -> int:
        cfg = self.config
        return multistep_order(
            cfg.solver_order, self.lower_order_nums, self.step_index, len(self.timesteps),
            lower_order_final=cfg.lower_order_final, euler_at_final=cfg.euler_at_final,
            final_sigma_is_zero=cfg.final_sigmas_type == "zero",
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Advance ``sample`` by one grid step using the current and stored model outputs."""
        self._require_grid()
        if self.step_index is None:
            self._init_step_index(timestep)
        order = self._this_order()
        converted = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = [*self.model_outputs[1:], converted]
        work = sample.to(torch.float32) if self._float32_solve else sample
        noise = self._draw_noise(model_output, generator, variance_noise)
        i = self.step_index
        points = [self._point(i + 1)] + [self._point(i - k) for k in range(order)]
        prev_sample = multistep_update(
            self.config.algorithm_type, self.config.solver_type, work, self.model_outputs, points, noise
        )
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
