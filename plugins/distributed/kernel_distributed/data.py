"""Data parallel: each process launched by ``torchrun`` / ``accelerate launch`` takes its share of the prompts.

The split is accelerate's ``PartialState.split_between_processes`` (contiguous, in rank order), and every
prompt keeps its index, so prompt ``i`` is generated with seed ``seed + i`` and written as ``i`` whatever
the number of processes: the pictures equal a single-process run, each written once.
"""

from __future__ import annotations

import random
from typing import Any, Sequence


def _state(state: Any = None) -> Any:
    if state is not None:
        return state
    import torch
    from accelerate import PartialState

    accelerator = getattr(torch, "accelerator", None)
    has_accelerator = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    return PartialState(cpu=not has_accelerator)  # on CPUs accelerate splits only when told cpu=True (gloo)


def split_prompts(prompts: Sequence[str], state: Any = None) -> list[tuple[int, str]]:
    """This process's ``(index, prompt)`` pairs (all of them when not launched distributed)."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a list of strings")
    state = _state(state)
    with state.split_between_processes(list(enumerate(prompts))) as mine:
        return list(mine)


def shared_seed(seed: int | None, state: Any = None) -> int:
    """``seed``, or (``None``) one random seed drawn by rank 0 and given to every process."""
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        return seed
    state = _state(state)
    value = [random.randrange(2**32)]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(value, from_process=0)
    return int(value[0])


def process_device(state: Any = None) -> Any:
    """The device accelerate gives this process (``cuda:LOCAL_RANK`` on GPUs, else the CPU)."""
    return _state(state).device


def is_distributed_launch() -> bool:
    """Whether this process was started by torchrun / accelerate launch with more than one process."""
    import os

    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False
