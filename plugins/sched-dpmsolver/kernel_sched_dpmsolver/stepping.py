"""Step bookkeeping shared by the solver schedulers: which grid point ``step`` is at.

Diffusers' rule: the first call to ``step`` (or ``scale_model_input``) finds its timestep in
``timesteps`` (the second match if it occurs twice, so image-to-image that starts mid-schedule
does not skip a sigma); later calls just advance ``step_index``.  ``set_begin_index`` skips the
search.

The search runs on a host copy of the schedule.  When the caller passes an element of the
device-resident ``timesteps`` (the normal ``for t in scheduler.timesteps`` loop), its position
is read from the tensor's storage offset, so no value is copied back from the device.
"""

from __future__ import annotations

from typing import Any

import torch

KARRAS_COMPATIBLES = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
)
"""The Diffusers scheduler names that accept each other's configs (``KarrasDiffusionSchedulers``)."""


def _position_in(view: torch.Tensor, table: torch.Tensor) -> int | None:
    """Index of a one-element ``view`` inside the 1-D ``table`` if it shares its storage, else None."""
    if view.numel() != 1 or table.ndim != 1 or table.numel() == 0 or view.dtype != table.dtype:
        return None
    if view.device != table.device:
        return None
    try:
        if view.untyped_storage().data_ptr() != table.untyped_storage().data_ptr():
            return None
    except (RuntimeError, NotImplementedError):  # tensors without storage (functional tensors)
        return None
    offset = view.storage_offset() - table.storage_offset()
    stride = table.stride(0)
    if stride <= 0 or offset < 0 or offset % stride:
        return None
    pos = offset // stride
    return pos if pos < table.shape[0] else None


class StepIndexMixin:
    """``timesteps`` with a host mirror, ``step_index``/``begin_index`` and the timestep search.

    ``_missing_timestep`` is ``"last"`` (a timestep not in the schedule maps to the last step,
    as the DPM-Solver family does) or ``"error"`` (as the sigma-based schedulers do).
    """

    _missing_timestep = "last"
    _step_index: int | None = None
    _begin_index: int | None = None

    @property
    def timesteps(self) -> torch.Tensor:
        return self._timesteps

    @timesteps.setter
    def timesteps(self, value: Any) -> None:
        value = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        self._timesteps = value
        self._timesteps_host = value.detach().to("cpu")

    @property
    def step_index(self) -> int | None:
        """Position of the current step in ``timesteps`` (None until the first step)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First step index, when a pipeline set it with ``set_begin_index``."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next loop at ``begin_index`` instead of searching for the first timestep."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, int) or begin_index < 0:
            raise ValueError(f"begin_index must be a non-negative int, got {begin_index!r}")
        self._begin_index = begin_index

    def _host_value(self, timestep: Any) -> Any:
        if isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu":
            pos = _position_in(timestep, self._timesteps)
            if pos is not None:
                return self._timesteps_host[pos]
            return timestep.detach().to("cpu")  # a device value we did not hand out: one copy
        return timestep

    def index_for_timestep(self, timestep: Any, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Index of ``timestep`` in the schedule (second match if repeated)."""
        if schedule_timesteps is None:
            schedule = self._timesteps_host
        else:
            schedule = schedule_timesteps.detach().to("cpu")
        value = self._host_value(timestep)
        matches = (schedule == value).nonzero()
        if len(matches) == 0:
            if self._missing_timestep == "last":
                return len(schedule) - 1
            raise ValueError(f"timestep {value!r} is not one of this scheduler's timesteps {schedule.tolist()}")
        return int(matches[1 if len(matches) > 1 else 0])

    def _init_step_index(self, timestep: Any) -> None:
        if self._begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _step_indices_for(self, timesteps: Any) -> list[int]:
        """Step indices of a batch of timesteps for ``add_noise``."""
        if self._begin_index is not None:
            n = torch.as_tensor(timesteps).reshape(-1).shape[0]
            return [self._step_index if self._step_index is not None else self._begin_index] * n
        host = torch.as_tensor(timesteps).detach().to("cpu").reshape(-1)
        return [self.index_for_timestep(t) for t in host]
