"""FreeInit (Wu et al., arXiv:2312.07537): denoise several times, each time restarting from noise whose
low spatio-temporal frequencies come from the previous result.

After iteration ``k`` the result is noised back to the last training timestep with the first
iteration's noise, then mixed in 3-D frequency space (frames x height x width) with fresh noise: a
low-pass filter keeps the result's low frequencies and the fresh noise supplies the high ones.  This
wraps the engine's loop (:meth:`kernel.engine.Engine.denoise`); it adds no loop of its own.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fft as fft

from kernel.scheduling import randn_tensor

FILTERS = ("butterworth", "gaussian", "ideal")


def free_init_filter(shape: tuple[int, ...], method: str, order: float, spatial_stop_frequency: float,
                     temporal_stop_frequency: float, device: Any = None) -> torch.Tensor:
    """The low-pass mask over the last three dims ``(F, H, W)`` of ``shape`` (frequency-centred layout)."""
    frames, height, width = shape[-3:]
    if spatial_stop_frequency == 0 or temporal_stop_frequency == 0:
        return torch.zeros(shape, device=device)
    t = (2 * torch.arange(frames, dtype=torch.float64) / frames - 1) * (spatial_stop_frequency / temporal_stop_frequency)
    h = 2 * torch.arange(height, dtype=torch.float64) / height - 1
    w = 2 * torch.arange(width, dtype=torch.float64) / width - 1
    d2 = t[:, None, None] ** 2 + h[None, :, None] ** 2 + w[None, None, :] ** 2
    if method == "butterworth":
        mask = 1 / (1 + (d2 / spatial_stop_frequency**2) ** order)
    elif method == "gaussian":
        mask = torch.exp(-1 / (2 * spatial_stop_frequency**2) * d2)
    else:  # ideal
        mask = (d2 <= spatial_stop_frequency * 2).to(torch.float64)
    return mask.to(torch.float32).expand(shape).to(device)


def mix_frequencies(x: torch.Tensor, noise: torch.Tensor, low_pass: torch.Tensor) -> torch.Tensor:
    """``x``'s frequencies under ``low_pass`` plus ``noise``'s above it (3-D FFT over frames, height, width)."""
    dims = (-3, -2, -1)
    x_freq = fft.fftshift(fft.fftn(x, dim=dims), dim=dims)
    noise_freq = fft.fftshift(fft.fftn(noise, dim=dims), dim=dims)
    mixed = x_freq * low_pass + noise_freq * (1 - low_pass)
    return fft.ifftn(fft.ifftshift(mixed, dim=dims), dim=dims).real


class FreeInitMixin:
    """``enable_free_init`` / ``disable_free_init`` for a video pipeline of the engine (see the module docstring).

    A pipeline may override :meth:`_free_init_schedule` (video-to-video trims each new schedule by
    ``strength``).
    """

    #: Whether each iteration's schedule length is the previous iteration's trimmed length (as Diffusers'
    #: video-to-video pipeline does) instead of the call's ``num_inference_steps``.
    _free_init_carries_steps = False

    def enable_free_init(self, num_iters: int = 3, use_fast_sampling: bool = False, method: str = "butterworth",
                         order: int = 4, spatial_stop_frequency: float = 0.25,
                         temporal_stop_frequency: float = 0.25) -> None:
        """Turn FreeInit on: ``num_iters`` denoising passes; ``use_fast_sampling`` runs ``k / num_iters`` of the
        steps in pass ``k`` (coarse to fine); ``method`` is the low-pass filter (``butterworth`` of ``order``,
        ``gaussian`` or ``ideal``); the stop frequencies are normalised to [0, 1]."""
        if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
            raise ValueError(f"num_iters must be a positive int, got {num_iters!r}")
        if method not in FILTERS:
            raise ValueError(f"method={method!r} is not a FreeInit filter; use one of {list(FILTERS)}")
        if isinstance(order, bool) or not isinstance(order, (int, float)) or not order > 0:
            raise ValueError(f"order must be a positive number, got {order!r}")
        for name, value in (("spatial_stop_frequency", spatial_stop_frequency),
                            ("temporal_stop_frequency", temporal_stop_frequency)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        self._free_init_num_iters = num_iters
        self._free_init_use_fast_sampling = bool(use_fast_sampling)
        self._free_init_method = method
        self._free_init_order = order
        self._free_init_spatial_stop_frequency = spatial_stop_frequency
        self._free_init_temporal_stop_frequency = temporal_stop_frequency

    def disable_free_init(self) -> None:
        self._free_init_num_iters = None

    @property
    def free_init_enabled(self) -> bool:
        return getattr(self, "_free_init_num_iters", None) is not None

    # ---------------------------------------------------------------- the engine's loop, repeated
    def _free_init_schedule(self, steps: int, device: Any) -> tuple[torch.Tensor, int]:
        """The schedule of one FreeInit pass of ``steps`` steps: ``(timesteps, number of steps)``."""
        self.scheduler.set_timesteps(steps, device=device)
        return self.scheduler.timesteps, steps

    def _free_init_latents(self, latents: torch.Tensor, initial_noise: torch.Tensor, call: Any) -> torch.Tensor:
        """The next pass's starting latents from the last pass's result (see the module docstring)."""
        shape = latents.shape
        low_pass = free_init_filter((1, *shape[1:]), self._free_init_method, self._free_init_order,
                                    self._free_init_spatial_stop_frequency, self._free_init_temporal_stop_frequency,
                                    device=latents.device)
        last = torch.full((shape[0],), self.scheduler.config.num_train_timesteps - 1, dtype=torch.long)
        noised = self.scheduler.add_noise(latents, initial_noise, last.to(latents.device)).to(torch.float32)
        fresh = randn_tensor(shape, generator=call.generator, device=latents.device, dtype=torch.float32)
        return mix_frequencies(noised, fresh, low_pass).to(latents.dtype)

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, num_inference_steps: int, *args: Any,
                **kwargs: Any) -> torch.Tensor:
        if not self.free_init_enabled:
            return super().denoise(latents, timesteps, num_inference_steps, *args, **kwargs)
        call, iters = self._call, self._free_init_num_iters
        initial_noise = latents.detach().clone()
        steps = num_inference_steps
        for k in range(iters):
            if k > 0:
                latents = self._free_init_latents(latents, initial_noise, call)
            run = max(1, int(steps / iters * (k + 1))) if self._free_init_use_fast_sampling else steps
            timesteps, count = self._free_init_schedule(run, call.device)
            if self._free_init_carries_steps:
                steps = count
            latents = super().denoise(latents, timesteps, count, *args, **kwargs)
        return latents
