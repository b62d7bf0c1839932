"""DPM++ 2S a: the second-order single-step DPM-Solver++ (Lu et al. 2022, "DPM-Solver++",
Algorithm 1 with r = 1/2) combined with ancestral noise, as in k-diffusion's
``sample_dpmpp_2s_ancestral``.

Each step from ``sigma_i`` to ``sigma_{i+1}`` first goes deterministically to
``sigma_down`` (see :func:`ancestral_step`) with two model evaluations, at ``sigma_i`` and at
the log-midpoint ``sqrt(sigma_i * sigma_down)``, in the data-prediction exponential-integrator
form (``lambda = -log sigma``, ``h = lambda_down - lambda_i``):

    u      = (sigma_mid / sigma_i) x + (1 - sigma_mid / sigma_i) D(x, sigma_i)
    x_down = (sigma_down / sigma_i) x + (1 - sigma_down / sigma_i) D(u, sigma_mid)

then adds ``sigma_up`` fresh noise.  A step whose ``sigma_down`` is 0 (the last one) is a
single evaluation returning ``D``.  So ``len(timesteps) == 2 n - 1`` for ``eta > 0``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from kernel.config import register_to_config
from kernel_samplers_a1111.planned import PlannedSigmaScheduler, ancestral_step


class DPMPP2SAncestralScheduler(PlannedSigmaScheduler):
    """DPM++ 2S ancestral (A1111 "DPM++ 2S a"; with ``use_karras_sigmas`` "DPM++ 2S a Karras")."""

    order = 2

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
        evals, stages = [], []
        for i in range(n):
            s, s_next = float(outer[i]), float(outer[i + 1])
            down, up = ancestral_step(s, s_next, self.config.eta)
            if down == 0:
                evals.append(s)
                stages.append(("single", s, s_next, up))
            else:
                mid = math.sqrt(s * down)
                evals += [s, mid]
                stages += [("first", s, mid, up), ("second", s, down, up, s_next)]
        return evals, stages, 0.0

    def _reset_state(self) -> None:
        self._x_start: torch.Tensor | None = None

    def _starts_a_step(self, k: int) -> bool:
        return self._stages[k][0] != "second"

    def _advance(self, k: int, x: torch.Tensor, denoised: torch.Tensor, generator: Any) -> torch.Tensor:
        kind, s, *rest = self._stages[k]
        s_noise = self.config.s_noise
        if kind == "single":
            s_next, up = rest
            out = denoised  # Euler to sigma_down = 0 lands on D exactly
            return out + self._noise(out, generator) * (s_noise * up) if s_next > 0 else out
        if kind == "first":
            mid, _ = rest
            self._x_start = x
            ratio = mid / s
            return ratio * x + (1.0 - ratio) * denoised
        down, up, s_next = rest
        ratio = down / s
        out = ratio * self._x_start + (1.0 - ratio) * denoised
        self._x_start = None
        if s_next > 0 and up > 0:
            out = out + self._noise(out, generator) * (s_noise * up)
        return out
