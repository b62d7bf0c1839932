"""What to parallelise: :class:`ContextParallelConfig` (Diffusers' name and fields) and :class:`ParallelConfig`.

``ulysses_degree * ring_degree`` must equal the number of processes (the world size).  Ranks form a
``(ring, ulysses)`` grid, row-major: rank ``= ring_index * ulysses_degree + ulysses_index``, so the
ranks of one Ulysses group are neighbours (on a multi-GPU node they share the fast links).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROTATE_METHODS = ("allgather", "p2p")


@dataclass
class ContextParallelConfig:
    """Context parallelism: the token sequence of a transformer denoiser split across processes.

    ``ulysses_degree``: processes that exchange attention heads by all-to-all (Jacobs et al.,
    "DeepSpeed Ulysses", arXiv:2309.14509); the head count must divide by it.
    ``ring_degree``: processes that pass key/value blocks around a ring and merge partial
    attention with the online softmax (Liu et al., "Ring Attention", arXiv:2310.01889).
    ``rotate_method``: ``"allgather"`` (Diffusers' default: gather every block, then merge) or
    ``"p2p"`` (send/receive to the ring neighbours, one remote block alive at a time).
    ``convert_to_fp32``: merge ring partials in float32.  ``ulysses_anything`` / ``ring_anything``
    are accepted for Diffusers compatibility; sequences of any length work in every mode here.
    ``mesh`` (a ``DeviceMesh`` with "ring" and "ulysses" dims) is not supported: the groups are built
    from the degrees.
    """

    ring_degree: int | None = None
    ulysses_degree: int | None = None
    convert_to_fp32: bool = True
    rotate_method: str = "allgather"
    mesh: Any = None
    ulysses_anything: bool = False
    ring_anything: bool = False

    def __post_init__(self) -> None:
        for name in ("ring_degree", "ulysses_degree"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, 1)
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1 (or None for 1), got {value!r}")
        if self.ring_degree == 1 and self.ulysses_degree == 1:
            raise ValueError("ring_degree or ulysses_degree must be greater than 1 for context parallelism "
                             "(their product is the number of processes)")
        if self.rotate_method not in ROTATE_METHODS:
            raise ValueError(f"rotate_method={self.rotate_method!r}; use one of {ROTATE_METHODS}")
        if self.mesh is not None:
            raise ValueError("mesh= is not supported; the ring and Ulysses groups are built from ring_degree and "
                             "ulysses_degree over the default process group")
        if self.ulysses_anything and self.ulysses_degree == 1:
            raise ValueError("ulysses_anything=True needs ulysses_degree > 1")
        if self.ring_anything and self.ring_degree == 1:
            raise ValueError("ring_anything=True needs ring_degree > 1")

    @property
    def mesh_shape(self) -> tuple[int, int]:
        return (self.ring_degree, self.ulysses_degree)

    @property
    def world_size(self) -> int:
        return self.ring_degree * self.ulysses_degree


@dataclass
class ParallelConfig:
    """Diffusers' wrapper: ``ParallelConfig(context_parallel_config=ContextParallelConfig(...))``."""

    context_parallel_config: ContextParallelConfig | None = None
    tensor_parallel_config: Any = None

    def __post_init__(self) -> None:
        if self.tensor_parallel_config is not None:
            raise ValueError("tensor_parallel_config is not supported; use context_parallel_config")
        if not isinstance(self.context_parallel_config, ContextParallelConfig):
            raise TypeError("ParallelConfig needs context_parallel_config=ContextParallelConfig(...), got "
                            f"{type(self.context_parallel_config).__name__}")


def context_config(config: Any) -> ContextParallelConfig:
    """The :class:`ContextParallelConfig` inside ``config`` (itself or a :class:`ParallelConfig`)."""
    if isinstance(config, ContextParallelConfig):
        return config
    inner = getattr(config, "context_parallel_config", None)
    if isinstance(inner, ContextParallelConfig):
        return inner
    raise TypeError("config must be a ContextParallelConfig or a ParallelConfig(context_parallel_config=...), "
                    f"got {type(config).__name__}")
