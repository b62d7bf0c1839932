"""DPM++ 3M SDE: the third-order multistep DPM-Solver++ (Lu et al. 2022, "DPM-Solver++",
section 4) on the SDE with noise strength ``eta``, as in k-diffusion's
``sample_dpmpp_3m_sde``.

With ``lambda = -log sigma``, ``h = lambda_{i+1} - lambda_i`` and ``h_eta = (1 + eta) h``,
the first-order part is ``x <- e^{-h_eta} x + (1 - e^{-h_eta}) D_i`` (the exact solution for a
constant denoiser; with eta = 1 it is the SDE-DPM-Solver-1 of Lu et al. / Gonzalez et al.).
The previous two denoised values give finite-difference estimates of the first and second
derivatives of ``D`` in ``lambda`` (non-uniform steps ``r0 = h_{i-1}/h``, ``r1 = h_{i-2}/h``),
added with the exponential-integrator weights ``phi_2 = (e^{-h_eta} - 1)/h_eta + 1`` and
``phi_3 = phi_2 / h_eta - 1/2``.  Fresh noise ``sigma_{i+1} sqrt(1 - e^{-2 eta h})`` is added
after each step.  With ``eta = 0`` this is the deterministic DPM-Solver++(3M).

k-diffusion draws the noise from a Brownian tree; increments over disjoint intervals are
independent standard normals, so drawing ``randn`` per step samples the same process.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel_samplers_a1111.planned import PlannedSigmaScheduler


class DPMPP3MSDEScheduler(PlannedSigmaScheduler):
    """DPM++ 3M SDE (A1111 "DPM++ 3M SDE"); one model evaluation per step."""

    order = 1

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
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        eta: float = 1.0,
        s_noise: float = 1.0,
    ) -> None:
        self._setup()

    def _plan(self, n: int):
        outer = self._outer_sigmas(n)
        return [float(s) for s in outer[:-1]], [(float(outer[i]), float(outer[i + 1])) for i in range(n)], 0.0

    def _reset_state(self) -> None:
        self._history: list[torch.Tensor] = []  # previous denoised values, newest first
        self._steps_h: list[float] = []  # their step sizes in lambda, newest first

    def _advance(self, k: int, x: torch.Tensor, denoised: torch.Tensor, generator: Any) -> torch.Tensor:
        s, s_next = self._stages[k]
        if s_next == 0:
            self._history, self._steps_h = [denoised], [0.0]
            return denoised
        eta = self.config.eta
        h = math.log(s / s_next)
        h_eta = h * (eta + 1)
        out = math.exp(-h_eta) * x + (-math.expm1(-h_eta)) * denoised
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if len(self._history) >= 2:
            (d_1, d_2), (h_1, h_2) = self._history[:2], self._steps_h[:2]
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - d_1) / r0
            d1_1 = (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            out = out + phi_2 * d1 - phi_3 * d2
        elif self._history:
            r = self._steps_h[0] / h
            out = out + phi_2 * ((denoised - self._history[0]) / r)
        if eta:
            scale = s_next * math.sqrt(-math.expm1(-2 * h * eta)) * self.config.s_noise
            out = out + self._noise(out, generator) * scale
        self._history = [denoised, *self._history[:1]]
        self._steps_h = [h, *self._steps_h[:1]]
        return out
