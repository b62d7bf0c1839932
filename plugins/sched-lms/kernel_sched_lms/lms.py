"""Linear multistep sampler over sigmas (k-diffusion ``sample_lms``).

The probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma`` is integrated with an
Adams-Bashforth method of up to ``order`` previous slopes; the weights are the integrals of the
Lagrange basis polynomials through the previous sigmas over ``[sigma_i, sigma_{i+1}]``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.scheduling import SchedulerOutputWithX0
from kernel_sched_common import KARRAS_COMPATIBLES, SigmaScheduler


class LMSDiscreteScheduler(SigmaScheduler):
    """Linear multistep (Adams-Bashforth in sigma) sampler, order 4 by default."""

    _compatibles = KARRAS_COMPATIBLES
    order = 1
    # Diffusers' LMS spaces Karras sigmas over the interpolated range only.
    _karras_uses_config_range = False

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        self._setup_sigma_tables(("epsilon", "v_prediction", "sample"))
        self.use_karras_sigmas = use_karras_sigmas
        self.is_scale_input_called = False
        self.set_timesteps(num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Space ``num_inference_steps`` timesteps and their sigmas (final sigma 0); clears the history."""
        n = self._check_sigma_set_timesteps(num_inference_steps)
        self.num_inference_steps = n
        steps, spaced, _ = self._spaced_sigmas(n)
        sigmas = torch.from_numpy(np.concatenate([spaced, [0.0]]).astype(np.float32))
        self._publish(torch.from_numpy(np.asarray(steps)).to(torch.float32), sigmas, device)
        self.derivatives: list[torch.Tensor] = []

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """Weight of the slope ``current_order`` steps back: the integral over ``[sigma_t, sigma_{t+1}]``
        of the Lagrange basis polynomial through ``sigma_t, ..., sigma_{t-order+1}``.

        The integrand runs in float32 like the sigma table it reads, so the weights equal Diffusers'.
        """
        from scipy import integrate

        nodes = self.sigmas.numpy()
        others = [nodes[t - k] for k in range(order) if k != current_order]
        own = nodes[t - current_order]

        def basis(tau: float) -> np.float32:
            value = np.float32(1.0)
            for node in others:
                value = value * ((np.float32(tau) - node) / (own - node))
            return value

        return integrate.quad(basis, nodes[t], nodes[t + 1], epsrel=1e-4)[0]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        order: int = 4,
        return_dict: bool = True,
    ):
        """Advance with the LMS combination of the last ``min(order, steps so far)`` slopes."""
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be a positive int, got {order!r}")
        if not self.is_scale_input_called:
            warnings.warn("call scale_model_input before step; LMS expects a scaled model input", stacklevel=2)
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        sigma = self.sigmas[i]
        x0 = self._x0_from_sigma(model_output, sample, sigma)
        self.derivatives.append((sample - x0) / sigma)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        used = min(i + 1, order)
        weights = [self.get_lms_coefficient(used, i, back) for back in range(used)]
        prev_sample = sample + sum(w * d for w, d in zip(weights, reversed(self.derivatives)))
        self._step_index = i + 1
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutputWithX0(prev_sample=prev_sample, pred_original_sample=x0)
