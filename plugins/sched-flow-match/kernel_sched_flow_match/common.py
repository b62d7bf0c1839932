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


class FlowMatchSchedulerBase(SchedulerMixin):
    """Step-index bookkeeping, ``scale_noise``/``add_noise`` and the identity input scaling."""

    init_noise_sigma = 1.0

    def _reset_index(self) -> None:
        self._step_index: int | None = None
        self._begin_index: int | None = None

    # -------------------------------------------------------------- step index
    @property
    def step_index(self) -> int | None:
        """Index of the next sigma to use; advances by one per ``step``."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First index to use (pipelines set it for img2img with ``set_begin_index``)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep: Any, schedule_timesteps: Any = None) -> int:
        """Position of ``timestep`` in the schedule; the second match when it repeats (img2img convention)."""
        table = self._timesteps_host if schedule_timesteps is None else _host(schedule_timesteps)
        value = float(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        hits = np.flatnonzero(table == value)
        if hits.size == 0:
            raise ValueError(
                f"timestep={value} is not in this scheduler's timesteps; pass one of scheduler.timesteps "
                "(call set_timesteps first)"
            )
        return int(hits[1] if hits.size > 1 else hits[0])

    def _init_step_index(self, timestep: Any) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def _set_tables(self, timesteps: torch.Tensor, sigmas: torch.Tensor) -> None:
        self.timesteps = timesteps
        self.sigmas = sigmas.to("cpu")
        self._timesteps_host = _host(timesteps)
        self._sigma_table = self.sigmas.numpy().astype(np.float32)

    # -------------------------------------------------------------- forward process
    def _sigmas_for(self, timestep: Any, batch: int) -> list[float]:
        if self._begin_index is None:
            ts = timestep.reshape(-1) if isinstance(timestep, torch.Tensor) else torch.as_tensor(timestep).reshape(-1)
            return [float(self._sigma_table[self.index_for_timestep(t)]) for t in ts]
        index = self._step_index if self._step_index is not None else self._begin_index
        return [float(self._sigma_table[index])] * batch

    def scale_noise(self, sample: torch.Tensor, timestep: Any, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching forward process ``x_sigma = sigma * noise + (1 - sigma) * sample``."""
        if noise is None:
            raise ValueError("scale_noise needs noise=<tensor shaped like sample>")
        batch = timestep.reshape(-1).shape[0] if isinstance(timestep, torch.Tensor) else 1
        sigma = torch.tensor(self._sigmas_for(timestep, batch), dtype=sample.dtype, device=sample.device)
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


def _host(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def exponential_time_shift(mu: float, sigma: float, t: Any) -> Any:
    """Flux's resolution shift: ``e^mu / (e^mu + (1/t - 1)^sigma)``."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def linear_time_shift(mu: float, sigma: float, t: Any) -> Any:
    """Linear variant: ``mu / (mu + (1/t - 1)^sigma)``."""
    return mu / (mu + (1 / t - 1) ** sigma)
