"""DPM-Solver run backwards in time: deterministic inversion of an image into noise.

Integrates the same probability-flow ODE from t = 0 towards T (used for DDIM-style
inversion, e.g. Mokady et al. 2023, "Null-text Inversion"); the grid ascends.
"""

from __future__ import annotations

import numpy as np
import torch

from kernel.config import register_to_config
from kernel_sched_common import KARRAS_COMPATIBLES, check_choice, validate_num_inference_steps

from .discrete import flow_shifted
from .multistep import VARIANCE_TYPES, DPMSolverMultistepScheduler
from .solver_math import multistep_order


class DPMSolverMultistepInverseScheduler(DPMSolverMultistepScheduler):
    """The inverse of :class:`DPMSolverMultistepScheduler`: timesteps go from 0 up to the noisiest one."""

    _compatibles = KARRAS_COMPATIBLES
    order = 1
    _float32_solve = False

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
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        # the inverse grid ends on a positive sigma, so every algorithm is allowed ("sigma_min" ending)
        self._validate_solver_options(algorithm_type, solver_type, solver_order, "sigma_min")
        check_choice("timestep_spacing", timestep_spacing, ("linspace", "leading", "trailing"))
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        self._build_tables(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=np.float32))
        self.model_outputs = [None] * solver_order
        self.lower_order_nums = 0
        self.use_karras_sigmas = use_karras_sigmas
        self.use_exponential_sigmas = use_exponential_sigmas
        self.use_beta_sigmas = use_beta_sigmas

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None) -> None:
        """Ascending grid from t = 0 to the noisiest timestep kept by ``lambda_min_clipped``."""
        cfg = self.config
        n = validate_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped))
        self.noisiest_timestep = cfg.num_train_timesteps - 1 - clipped
        top = self.noisiest_timestep
        if cfg.timestep_spacing == "linspace":
            timesteps = np.linspace(0, top, n + 1).round()[:-1].copy().astype(np.int64)
        elif cfg.timestep_spacing == "leading":
            ratio = (top + 1) // (n + 1)
            timesteps = (np.arange(0, n + 1) * ratio).round()[:-1].copy().astype(np.int64) + cfg.steps_offset
        else:
            ratio = cfg.num_train_timesteps / n
            timesteps = np.arange(top + 1, 0, -ratio).round()[::-1].copy().astype(np.int64) - 1

        train, log_train = self._train_sigmas()
        respaced = self._respaced(n, train)  # ascending: the bounds come from the unflipped table
        if respaced is not None:
            timesteps = self._times_of(respaced, log_train)
            if cfg.use_karras_sigmas:
                timesteps = timesteps.round().astype(np.int64)
            sigmas = np.concatenate([respaced, respaced[-1:]])
        elif cfg.use_flow_sigmas:
            raw = 1.0 - np.linspace(1, 1 / cfg.num_train_timesteps, n + 1)
            sigmas = np.flip(flow_shifted(raw, cfg.flow_shift))[:-1].copy()
            timesteps = sigmas * cfg.num_train_timesteps
            sigmas = np.concatenate([sigmas, sigmas[-1:]])
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
            top_sigma = float(((1 - self.alphas_cumprod[top]) / self.alphas_cumprod[top]) ** 0.5)
            sigmas = np.concatenate([sigmas, [top_sigma]])
        # repeated timesteps (many steps over a short range) are dropped; the sigma table is kept whole
        _, first = np.unique(timesteps, return_index=True)
        timesteps = timesteps[np.sort(first)]
        self._install_grid(sigmas, timesteps, device)
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0

    def _this_order(self) -> int:
        cfg = self.config
        return multistep_order(
            cfg.solver_order, self.lower_order_nums, self.step_index, len(self.timesteps),
            lower_order_final=cfg.lower_order_final, euler_at_final=cfg.euler_at_final,
        )
