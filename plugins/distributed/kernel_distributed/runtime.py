"""Process groups, timeouts and collective errors for the distributed plugin.

Every collective the plugin issues goes through :func:`collective`, so a peer that died or stopped
answering becomes one clear :class:`DistributedError` on the ranks still running (never a silent
hang: the process group's timeout bounds every wait).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

#: Seconds a collective may wait for its peers (``KERNEL_DIST_TIMEOUT`` overrides; Diffusers and torch use 10-30 min).
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(RuntimeError):
    """A collective failed: another rank raised, exited or did not answer within the timeout."""


def timeout_seconds() -> float:
    raw = os.environ.get("KERNEL_DIST_TIMEOUT")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"KERNEL_DIST_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"KERNEL_DIST_TIMEOUT must be positive, got {raw!r}")
    return value


def init_distributed(backend: str | None = None, timeout: float | None = None) -> tuple[int, int, torch.device]:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe in the environment.

    ``backend`` defaults to ``"nccl"`` when CUDA is available, else ``"gloo"``; ``timeout`` (seconds)
    bounds every collective (default :func:`timeout_seconds`).  Returns ``(rank, world_size, device)``,
    the device being ``cuda:LOCAL_RANK`` on GPUs.  Already initialised: nothing changes.
    """
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed")
    if backend is not None and backend not in ("gloo", "nccl", "mpi", "xccl"):
        raise ValueError(f"backend={backend!r}; use 'gloo' (CPU), 'nccl' (NVIDIA GPUs), 'xccl' or 'mpi'")
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if not dist.is_initialized():
        if missing:
            raise RuntimeError(f"no process group: the environment lacks {', '.join(missing)}; start the script with "
                               "torchrun --nproc_per_node N or accelerate launch --num_processes N")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        seconds = timeout if timeout is not None else timeout_seconds()
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
    return dist.get_rank(), dist.get_world_size(), current_device()


def current_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a failed or timed-out collective into a :class:`DistributedError` that says what happened."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as err:  # DistBackendError / gloo "Connection closed by peer" / timeouts
        rank = dist.get_rank() if dist.is_initialized() else "?"
        world = dist.get_world_size() if dist.is_initialized() else "?"
        raise DistributedError(
            f"{what} failed on rank {rank} of {world}: another rank raised, exited or did not answer within the "
            f"process group's timeout (see that rank's own error above); {type(err).__name__}: {err}"
        ) from err


@dataclass
class Mesh:
    """This rank's place in the ``(ring, ulysses)`` grid and the process groups of its row and column."""

    rank: int
    world_size: int
    ring_degree: int
    ulysses_degree: int
    ulysses_group: Any
    ring_group: Any
    ring_ranks: list[int]

    @property
    def ring_index(self) -> int:
        return self.rank // self.ulysses_degree

    @property
    def ulysses_index(self) -> int:
        return self.rank % self.ulysses_degree


def build_mesh(ring_degree: int, ulysses_degree: int) -> Mesh:
    """The groups for a ``ring_degree x ulysses_degree`` grid over the default process group (collective:
    every rank must call it)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("context parallelism needs torch.distributed.init_process_group() first (start with "
                           "torchrun or accelerate launch; kernel_distributed.init_distributed() does both steps)")
    world, rank = dist.get_world_size(), dist.get_rank()
    if ring_degree * ulysses_degree != world:
        raise ValueError(f"ring_degree ({ring_degree}) x ulysses_degree ({ulysses_degree}) must equal the number of "
                         f"processes ({world})")
    seconds = datetime.timedelta(seconds=timeout_seconds())
    ulysses_group = ring_group = None
    with collective("creating the context-parallel process groups"):
        if 1 < ulysses_degree < world:
            for row in range(ring_degree):  # every rank creates every group, in the same order
                group = dist.new_group([row * ulysses_degree + i for i in range(ulysses_degree)], timeout=seconds)
                if row == rank // ulysses_degree:
                    ulysses_group = group
        elif ulysses_degree == world:
            ulysses_group = dist.group.WORLD
        if 1 < ring_degree < world:
            for col in range(ulysses_degree):
                group = dist.new_group([r * ulysses_degree + col for r in range(ring_degree)], timeout=seconds)
                if col == rank % ulysses_degree:
                    ring_group = group
        elif ring_degree == world:
            ring_group = dist.group.WORLD
    ring_ranks = [r * ulysses_degree + rank % ulysses_degree for r in range(ring_degree)]
    return Mesh(rank, world, ring_degree, ulysses_degree, ulysses_group, ring_group, ring_ranks)
