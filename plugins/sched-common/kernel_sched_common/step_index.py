"""Where the denoising loop is, tracked without reading device memory (``step_index`` / ``begin_index``).

:class:`StepIndexMixin` is shared by the discrete-time, solver, EDM, flow-matching and consistency
schedulers (:class:`MirroredTimestepsMixin` keeps the host copy of ``timesteps`` itself).  Every
table stays on the CPU and is indexed with Python ints, so ``step`` never reads a device tensor: a
timestep handed over as a CPU tensor or a number is looked up in a host copy of the schedule, an
element of the device-resident ``timesteps`` is found by its storage offset, and any other
accelerator timestep is taken to be the schedule entry at the current step index (pipelines that
start mid-schedule call ``set_begin_index`` first, as with Diffusers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def host_scalar(value: Any) -> float | int | None:
    """``value`` as a Python number when that needs no device synchronisation, else ``None``.

    Numbers, numpy scalars and CPU tensors are read; a tensor on an accelerator (or on the meta
    device) is not, because reading it would stall the denoising loop.
    """
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            return None
        if value.numel() != 1:
            raise ValueError(f"timestep must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return value.item()
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"timestep must be a scalar, got an array of shape {value.shape}")
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (int, float)):
        return value
    raise TypeError(f"timestep must be a number or a scalar tensor, got {type(value).__name__}")


def host_int(value: Any) -> int:
    """``value`` as a Python int for schedulers whose timestep decides control flow.

    A number or CPU tensor is read for free; an accelerator tensor is copied once (a sync): pass
    CPU timesteps (``set_timesteps`` without ``device``) to keep such a loop sync-free.
    """
    if isinstance(value, torch.Tensor) and value.device.type != "cpu":
        value = value.detach().to("cpu")
    return int(host_scalar(value))


def as_host_array(values: Any) -> np.ndarray:
    """A numpy copy of a schedule given as list, array or tensor (tensors are copied to the CPU once)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def match_index(schedule: np.ndarray, value: float | int, *, first: bool = False) -> int:
    """Position of ``value`` in ``schedule``; with repeats, the second one unless ``first``.

    Taking the second of two equal timesteps is the convention of the second-order solvers
    (their schedules repeat each inner timestep) and of image-to-image loops that start at a
    timestep that also appears earlier.
    """
    hits = np.flatnonzero(schedule == np.asarray(value, dtype=schedule.dtype))
    if hits.size == 0:
        raise ValueError(
            f"timestep {value} is not one of the scheduler's timesteps {schedule.tolist()}; "
            "pass one of scheduler.timesteps (call set_timesteps first)"
        )
    return int(hits[0] if first or hits.size == 1 else hits[1])


def position_in(view: torch.Tensor, table: torch.Tensor) -> int | None:
    """Index of a one-element ``view`` inside the 1-D ``table`` when it shares its storage, else ``None``.

    The normal loop ``for t in scheduler.timesteps`` hands ``step`` views of the device-resident
    schedule; their storage offset says where they are without copying a value to the host.
    """
    if not isinstance(table, torch.Tensor) or view.numel() != 1 or table.ndim != 1 or table.numel() == 0:
        return None
    if view.dtype != table.dtype or view.device != table.device:
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


def check_begin_index(begin_index: Any) -> int:
    """``begin_index`` as an int, or a ``ValueError`` naming it when it is not a non-negative int."""
    if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)) or begin_index < 0:
        raise ValueError(f"begin_index must be a non-negative int, got {begin_index!r}")
    return int(begin_index)


class BeginIndexMixin:
    """``set_begin_index`` / ``begin_index`` of the Scheduler protocol, for schedulers without a step counter.

    Schedulers that locate every step by its timestep value (or take the step's noise levels as
    arguments) need no start position; they store it and report it, so a pipeline can call
    ``set_begin_index`` on any scheduler.
    """

    _begin_index: int | None = None

    @property
    def begin_index(self) -> int | None:
        """First index of the loop when it does not start at ``timesteps[0]`` (set by pipelines)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the loop at ``timesteps[begin_index]`` (image-to-image, inpainting)."""
        self._begin_index = check_begin_index(begin_index)


class StepIndexMixin(BeginIndexMixin):
    """``step_index`` / ``begin_index`` bookkeeping over a host copy of ``timesteps``.

    Subclasses keep ``self._schedule_host`` (numpy) in step with ``self.timesteps`` (or use
    :class:`MirroredTimestepsMixin`, which does it for them).  A timestep handed over as a number
    or CPU tensor is looked up in the host copy; one that is an element of the device-resident
    ``timesteps`` is found by its storage offset.  Any other accelerator timestep is, with
    ``_read_device_timesteps`` false (the default), taken to be the schedule entry at the current
    step index; with it true it is copied to the host once.
    """

    _step_index: int | None = None
    _schedule_host: np.ndarray
    #: what a timestep missing from the schedule gives: ``"error"`` or ``"last"`` (the last index,
    #: as the DPM-Solver family does)
    _missing_timestep = "error"
    #: whether a device timestep that is not an element of ``timesteps`` may be copied to the host
    _read_device_timesteps = False

    @property
    def step_index(self) -> int | None:
        """Position in ``timesteps`` of the next ``step`` (``None`` before the first call)."""
        return self._step_index

    def _reset_step_index(self) -> None:
        self._step_index = None
        self._begin_index = None

    def _host_timestep(self, timestep: Any) -> float | int | None:
        """``timestep`` as a Python number without a device sync, or ``None`` if that is impossible."""
        value = host_scalar(timestep)
        if value is not None:
            return value
        pos = position_in(timestep, getattr(self, "timesteps", None))
        if pos is not None:
            return self._schedule_host[pos].item()
        if self._read_device_timesteps:  # one copy of a device timestep we did not hand out
            return host_scalar(timestep.detach().to("cpu"))
        return None

    def _index_of(self, value: float | int, schedule: np.ndarray | None = None) -> int:
        """Index of ``value`` in the schedule (second match where it repeats), per ``_missing_timestep``."""
        schedule = self._schedule_host if schedule is None else schedule
        if self._missing_timestep == "last" and not np.any(schedule == np.asarray(value, dtype=schedule.dtype)):
            return len(schedule) - 1
        return match_index(schedule, value)

    def index_for_timestep(self, timestep: Any, schedule_timesteps: Any = None) -> int:
        """Index of ``timestep`` in the schedule (the second match where the schedule repeats it)."""
        schedule = None if schedule_timesteps is None else as_host_array(schedule_timesteps)
        value = self._host_timestep(timestep)
        if value is None:
            raise ValueError("index_for_timestep needs a CPU timestep; move it with .cpu() first")
        return self._index_of(value, schedule)

    def _position(self) -> int:
        if self._step_index is not None:
            return self._step_index
        return self._begin_index or 0

    def _locate(self, timestep: Any) -> tuple[int | float, int | None]:
        """``(value, position)`` of a timestep handed to ``step``, without reading device memory.

        A number or CPU tensor is looked up (first match; position ``None`` when the schedule does
        not hold it).  An accelerator tensor is taken to be the schedule entry at the current
        position: ``begin_index`` at first, then one further per ``step``.
        """
        value = host_scalar(timestep)
        if value is None:
            position = self._position()
            if position >= len(self._schedule_host):
                raise ValueError(
                    f"step called {position + 1} times on a schedule of {len(self._schedule_host)} timesteps; "
                    "call set_timesteps again (or pass the timestep as a Python number)"
                )
            return self._schedule_host[position].item(), position
        hits = np.flatnonzero(self._schedule_host == value)
        return value, (int(hits[0]) if hits.size else None)

    def _advance(self, position: int | None) -> None:
        self._step_index = (position if position is not None else self._position()) + 1

    def _init_step_index(self, timestep: Any) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        value = self._host_timestep(timestep)
        # An unknown accelerator timestep cannot be read without a sync: the loop starts at the beginning.
        self._step_index = 0 if value is None else self._index_of(value)

    def _step_indices_for(self, timesteps: Any) -> list[int]:
        """Step indices of a batch of timesteps (``add_noise``): ``begin_index`` once set, else looked up."""
        if self._begin_index is not None:
            n = torch.as_tensor(timesteps).reshape(-1).shape[0]
            return [self._step_index if self._step_index is not None else self._begin_index] * n
        host = torch.as_tensor(timesteps).detach().to("cpu").reshape(-1)
        return [self._index_of(host_scalar(t)) for t in host]


class MirroredTimestepsMixin(StepIndexMixin):
    """:class:`StepIndexMixin` whose ``timesteps`` attribute keeps the host copy up to date itself."""

    _read_device_timesteps = True

    @property
    def timesteps(self) -> torch.Tensor:
        return self._timesteps

    @timesteps.setter
    def timesteps(self, value: Any) -> None:
        value = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        self._store_timesteps(value.detach().to("cpu"), None)
        self._timesteps = value

    def _store_timesteps(self, host: torch.Tensor, device: Any) -> None:
        """Publish the CPU tensor ``host`` as ``timesteps`` on ``device`` (no copy back from the device)."""
        self._schedule_host = host.numpy()
        self._timesteps = host.to(device) if device is not None else host
