"""What both flow-matching schedulers share: the shifted sigma table and the step counter.

Sigmas live on the CPU as a float32 numpy array (``_sigma_table``); ``step`` reads Python
floats from it, so the denoising loop does no host-device synchronisation once the step
index is known.  The index is found once, on the first ``step`` (or set with
``set_begin_index``); passing CPU timesteps keeps even that lookup on the host.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from kernel.scheduling import SchedulerMixin
from kernel_sched_common import StepIndexMixin


def calculate_shift(
    image_seq_len: float,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Resolution-dependent shift ``mu`` (Esser et al. 2024, SD3 section 5.3.2; as used by Flux).

    ``mu`` grows linearly with the number of image tokens, from ``base_shift`` at ``base_seq_len``
    to ``max_shift`` at ``max_seq_len`` (and extrapolates outside that range).
    """
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)


def shift_sigmas(sigmas: Any, shift: float) -> Any:
    """Static timestep shift (SD3 eq. 23): ``shift * s / (1 + (shift - 1) * s)``."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def reject_integer_timestep(timestep: Any, cls_name: str) -> None:
    if isinstance(timestep, (int, np.integer)) and not isinstance(timestep, bool) or (
        isinstance(timestep, torch.Tensor) and not torch.is_floating_point(timestep)
    ):
        raise ValueError(
            f"{cls_name}.step got an integer timestep {timestep!r}; pass one of scheduler.timesteps "
            "(float values), not a loop index from enumerate(timesteps)"
        )


class FlowMatchSchedulerBase(StepIndexMixin, SchedulerMixin):
    """Step-index bookkeeping (the kernel's), ``scale_noise``/``add_noise`` and the identity input scaling.

    A timestep not in the schedule is an error; a device timestep that is not an element of
    ``timesteps`` is read once (as Diffusers does).
    """

    init_noise_sigma = 1.0
    _read_device_timesteps = True

    def _set_tables(self, timesteps: torch.Tensor, sigmas: torch.Tensor) -> None:
        self.timesteps = timesteps
        self.sigmas = sigmas.to("cpu")
        self._schedule_host = timesteps.detach().to("cpu").numpy()
        self._sigma_table = self.sigmas.numpy().astype(np.float32)

    # -------------------------------------------------------------- forward process
    def _sigmas_for(self, timestep: Any) -> list[float]:
        return [float(self._sigma_table[i]) for i in self._step_indices_for(timestep)]

    def scale_noise(self, sample: torch.Tensor, timestep: Any, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching forward process ``x_sigma = sigma * noise + (1 - sigma) * sample``."""
        if noise is None:
            raise ValueError("scale_noise needs noise=<tensor shaped like sample>")
        sigma = torch.tensor(self._sigmas_for(timestep), dtype=sample.dtype, device=sample.device)
        sigma = sigma.reshape(-1, *([1] * (sample.ndim - 1)))
        return sigma * noise + (1.0 - sigma) * sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """Same as ``scale_noise`` (the protocol's name for the forward process)."""
        return self.scale_noise(original_samples, timesteps, noise)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Flow-matching models take the sample as is."""
        return sample

    def _sigma_to_t(self, sigma: Any) -> Any:
        return sigma * self.config.num_train_timesteps


class TimeShiftMixin:
    """``time_shift`` and ``stretch_shift_to_terminal`` of the flow-sigma schedulers (Flux, LTX-Video)."""

    def time_shift(self, mu: float, sigma: float, t: Any) -> Any:
        """Resolution-dependent shift of ``t`` by ``mu`` (``config.time_shift_type`` picks the form)."""
        if self.config.time_shift_type == "linear":
            return linear_time_shift(mu, sigma, t)
        return exponential_time_shift(mu, sigma, t)

    def stretch_shift_to_terminal(self, t: Any) -> Any:
        """Rescale ``1 - t`` so the last value of the schedule equals ``config.shift_terminal`` (LTX-Video)."""
        one_minus = 1 - t
        scale = one_minus[-1] / (1 - self.config.shift_terminal)
        return 1 - one_minus / scale


def exponential_time_shift(mu: float, sigma: float, t: Any) -> Any:
    """Flux's resolution shift: ``e^mu / (e^mu + (1/t - 1)^sigma)``."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def linear_time_shift(mu: float, sigma: float, t: Any) -> Any:
    """Linear variant: ``mu / (mu + (1/t - 1)^sigma)``."""
    return mu / (mu + (1 / t - 1) ** sigma)
