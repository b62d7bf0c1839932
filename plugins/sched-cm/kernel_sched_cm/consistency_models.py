"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1).

A consistency model maps any point of the probability-flow ODE straight to its origin:
``f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma)`` with the boundary-condition
scalings of the paper's appendix C (``c_skip(sigma_min) = 1``, ``c_out(sigma_min) = 0``).
Each step denoises, then re-noises to the next (smaller) sigma of a Karras schedule
(Karras et al. 2022, eq. 5) indexed by training steps.  Timesteps are
``t = 250 * log(sigma)`` (the EDM/CM network's time input).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np
import torch

from kernel.config import register_to_config
from kernel.outputs import BaseOutput
from kernel.scheduling import SchedulerMixin, randn_tensor
from kernel_sched_common import StepIndexMixin, validate_num_inference_steps

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CMStochasticIterativeSchedulerOutput(BaseOutput):
    """prev_sample: the re-noised sample for the next step (the clean sample after the last)."""

    prev_sample: torch.Tensor


class CMStochasticIterativeScheduler(StepIndexMixin, SchedulerMixin):
    """Consistency-model sampler; config keys as Diffusers'.

    A device timestep that is not an element of ``timesteps`` is read once, as Diffusers does.
    """

    _read_device_timesteps = True

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 40,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        s_noise: float = 1.0,
        rho: float = 7.0,
        clip_denoised: bool = True,
    ) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.init_noise_sigma = sigma_max
        sigmas = self._karras(np.linspace(0, 1, num_train_timesteps))
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self.is_scale_input_called = False
        self._store(torch.from_numpy(self.sigma_to_t(sigmas)), torch.from_numpy(sigmas))

    def _store(self, timesteps: torch.Tensor, sigmas: torch.Tensor) -> None:
        self.timesteps = timesteps
        self.sigmas = sigmas.to("cpu")
        self._schedule_host = timesteps.detach().cpu().numpy()
        self._sigma_host = self.sigmas.numpy()
        self._reset_step_index()

    def _karras(self, ramp: np.ndarray) -> np.ndarray:
        cfg = self.config
        lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
        return (hi + ramp * (lo - hi)) ** cfg.rho

    def sigma_to_t(self, sigmas: float | np.ndarray) -> np.ndarray:
        """The network's time input for a noise level: ``1000 * 0.25 * log(sigma)``."""
        sigmas = np.asarray(sigmas, dtype=np.float64) if not isinstance(sigmas, np.ndarray) else sigmas
        return 250.0 * np.log(sigmas + 1e-44)

    # ---------------------------------------------------------------- schedule
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Evenly spaced training steps (``leading`` spacing), or custom descending integer ``timesteps``."""
        N = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps to set_timesteps")
        if timesteps is not None:
            steps = np.asarray(timesteps.cpu() if isinstance(timesteps, torch.Tensor) else timesteps)
            if steps.ndim != 1 or steps.size == 0:
                raise ValueError("custom timesteps must be a non-empty 1-D sequence")
            if np.any(np.diff(steps) >= 0):
                raise ValueError(f"custom timesteps must be strictly descending, got {steps.tolist()}")
            if steps[0] >= N:
                raise ValueError(f"custom timesteps must be below num_train_timesteps={N}, got {steps[0]}")
            steps = steps.astype(np.int64)
            self.custom_timesteps = True
        else:
            n = validate_num_inference_steps(num_inference_steps, N)
            self.num_inference_steps = n
            steps = (np.arange(0, n) * (N // n)).round()[::-1].copy().astype(np.int64)
            self.custom_timesteps = False
        # Position along the Karras ramp: train index i -> i / (N - 1).
        ramp = steps[::-1].copy() / (N - 1)
        sigmas = self._karras(ramp)
        ts = torch.from_numpy(self.sigma_to_t(sigmas))
        sigmas = np.concatenate([sigmas, [self.config.sigma_min]]).astype(np.float32)
        if device is not None:
            ts = ts.to(device, dtype=torch.float32) if str(device).startswith("mps") else ts.to(device)
        self._store(ts, torch.from_numpy(sigmas))

    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None and not self.custom_timesteps:
            raise RuntimeError(
                "CMStochasticIterativeScheduler.step was called before set_timesteps; call "
                "scheduler.set_timesteps(num_inference_steps) first"
            )

    # ---------------------------------------------------------------- scalings
    def get_scalings(self, sigma: Any) -> tuple[Any, Any]:
        """EDM preconditioning ``c_skip, c_out`` (Karras et al. 2022, Table 1)."""
        sd = self.config.sigma_data
        return sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2) ** 0.5

    def get_scalings_for_boundary_condition(self, sigma: Any) -> tuple[Any, Any]:
        """Scalings with ``f(x, sigma_min) = x`` (Song et al. 2023, appendix C)."""
        sd, lo = self.config.sigma_data, self.config.sigma_min
        return sd**2 / ((sigma - lo) ** 2 + sd**2), (sigma - lo) * sd / (sigma**2 + sd**2) ** 0.5

    def scale_model_input(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        """Divide by ``sqrt(sigma^2 + sigma_data^2)`` (the EDM ``c_in``)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self._sigma_host[self._step_index]
        self.is_scale_input_called = True
        return sample / float((sigma**2 + self.config.sigma_data**2) ** 0.5)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> CMStochasticIterativeSchedulerOutput | tuple:
        """Denoise with the consistency function, then add noise for the next sigma (Algorithm 1)."""
        if isinstance(timestep, (int, np.integer)) or (
            isinstance(timestep, torch.Tensor) and not torch.is_floating_point(timestep)
        ):
            raise ValueError(
                f"step got an integer timestep {timestep!r}; pass one of scheduler.timesteps, not a loop index"
            )
        self._require_timesteps()
        if not self.is_scale_input_called:
            logger.warning("call scale_model_input before step: the model must see the c_in-scaled sample")
        cfg = self.config
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= len(self.timesteps):
            raise ValueError("step called more often than there are timesteps; call set_timesteps again")
        sigma = self._sigma_host[self._step_index]
        nxt = self._sigma_host[self._step_index + 1] if self._step_index + 1 < cfg.num_train_timesteps else self._sigma_host[-1]
        c_skip, c_out = self.get_scalings_for_boundary_condition(sigma)
        denoised = float(c_out) * model_output + float(c_skip) * sample
        if cfg.clip_denoised:
            denoised = denoised.clamp(-1, 1)
        if len(self.timesteps) > 1:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
        else:
            noise = torch.zeros_like(model_output)
        sigma_hat = np.clip(nxt, np.float32(cfg.sigma_min), np.float32(cfg.sigma_max))
        scale = float((sigma_hat**2 - cfg.sigma_min**2) ** 0.5)
        prev_sample = denoised + (noise * cfg.s_noise) * scale
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return CMStochasticIterativeSchedulerOutput(prev_sample=prev_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x0 + sigma(t) * noise`` (variance-exploding forward process)."""
        idx = self._step_indices_for(timesteps)
        sigma = torch.tensor(self._sigma_host[idx], dtype=original_samples.dtype, device=original_samples.device)
        return original_samples + noise * sigma.reshape(-1, *([1] * (original_samples.ndim - 1)))
