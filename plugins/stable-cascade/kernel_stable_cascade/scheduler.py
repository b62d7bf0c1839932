"""Würstchen / Stable Cascade DDPM sampler on continuous timestep ratios ``t`` in ``[0, 1]``.

The noise level is a cosine schedule in ``t`` (Nichol & Dhariwal 2021) normalised to 1 at ``t = 0``:
``abar(t) = cos^2((t' + s) / (1 + s) * pi / 2) / cos^2(s / (1 + s) * pi / 2)`` clamped to
``[1e-4, 0.9999]``, where ``t' = 1 - (1 - t)^scaler`` for ``scaler > 1`` and ``t' = t^scaler`` for
``scaler < 1``.  ``set_timesteps(n)`` gives ``n + 1`` ratios from 1 to 0; a pipeline evaluates the model at the
first ``n``.  ``step`` is the ancestral DDPM update from ``t`` to the next ratio of the schedule (noise-free
when that ratio is 0); a step at the schedule's last ratio is the identity (Diffusers raises ``IndexError``
there), so a loop over every timestep, as generic tools run one, ends on the same sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernel.config import register_to_config
from kernel.outputs import BaseOutput
from kernel.scheduling import SchedulerMixin, randn_tensor


@dataclass
class DDPMWuerstchenSchedulerOutput(BaseOutput):
    """``prev_sample``: the sample at the next (lower) timestep ratio."""

    prev_sample: torch.Tensor = None


class DDPMWuerstchenScheduler(SchedulerMixin):
    """Ancestral DDPM steps on timestep ratios (see the module docstring)."""

    order = 1

    @register_to_config
    def __init__(self, scaler: float = 1.0, s: float = 0.008) -> None:
        if not isinstance(scaler, (int, float)) or scaler <= 0:
            raise ValueError(f"scaler must be a positive number, got {scaler!r}")
        self.scaler = float(scaler)
        self.s = torch.tensor([float(s)])
        self._init_alpha_cumprod = torch.cos(self.s / (1 + self.s) * math.pi * 0.5) ** 2
        self.init_noise_sigma = 1.0
        self.timesteps = None
        self._begin_index = None

    @property
    def begin_index(self) -> int | None:
        """The index a pipeline starts the loop at (``set_begin_index``); steps still find their place by value."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def _alpha_cumprod(self, t: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        if self.scaler > 1:
            t = 1 - (1 - t) ** self.scaler
        elif self.scaler < 1:
            t = t**self.scaler
        s = self.s.to(device if device is not None else t.device)
        abar = torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** 2 / self._init_alpha_cumprod.to(s.device)
        return abar.clamp(0.0001, 0.9999)

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor | None = None) -> torch.Tensor:
        """No input scaling."""
        return sample

    def set_timesteps(self, num_inference_steps: int | None = None,
                      timesteps: list[float] | torch.Tensor | None = None,
                      device: str | torch.device | None = None) -> None:
        """``num_inference_steps + 1`` ratios from 1 to 0, or the given ``timesteps`` (ratios, descending)."""
        if timesteps is None:
            if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
            timesteps = torch.linspace(1.0, 0.0, num_inference_steps + 1, device=device)
        elif num_inference_steps is not None:
            raise ValueError("pass either num_inference_steps or timesteps, not both")
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.tensor([float(t) for t in timesteps], device=device)
        self.timesteps = timesteps.to(device) if device is not None else timesteps

    def previous_timestep(self, timestep: torch.Tensor) -> torch.Tensor:
        """The ratio after ``timestep[0]`` in the schedule (the last ratio itself at the end), one per batch entry."""
        if self.timesteps is None:
            raise ValueError("call set_timesteps before step")
        index = int((self.timesteps - timestep[0]).abs().argmin())
        index = min(index + 1, len(self.timesteps) - 1)  # the last ratio steps to itself: the identity
        return self.timesteps[index][None].expand(timestep.shape[0])

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True):
        """One ancestral step from ``timestep`` (``(B,)`` ratios) to the next ratio of the schedule."""
        dtype, device = model_output.dtype, model_output.device
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        prev_t = self.previous_timestep(timestep)
        view = (timestep.shape[0],) + (1,) * (sample.ndim - 1)
        abar = self._alpha_cumprod(timestep, device).view(view)
        abar_prev = self._alpha_cumprod(prev_t, device).view(view)
        alpha = abar / abar_prev
        mean = (sample - (1 - alpha) * model_output / (1 - abar).sqrt()) / alpha.sqrt()
        noise = randn_tensor(mean.shape, generator=generator, device=device, dtype=dtype)
        sigma = ((1 - alpha) * (1 - abar_prev) / (1 - abar)).sqrt()
        prev = mean + sigma * noise * (prev_t != 0).float().view(view)
        prev = prev.to(dtype)
        return DDPMWuerstchenSchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``sqrt(abar(t)) x0 + sqrt(1 - abar(t)) noise`` for ratios ``timesteps`` ``(B,)``."""
        view = (timesteps.shape[0],) + (1,) * (original_samples.ndim - 1)
        abar = self._alpha_cumprod(timesteps, original_samples.device).view(view)
        return (abar.sqrt() * original_samples + (1 - abar).sqrt() * noise).to(original_samples.dtype)

    def __len__(self) -> int:
        return len(self.timesteps) - 1 if self.timesteps is not None else 0
