"""``device_map="balanced"``: whole pipeline components placed on several GPUs.

:func:`balanced_placement` is the pure rule (sizes and memory in, a map out); :func:`balanced_device_map`
is what ``DiffusionPipeline.from_pretrained(..., device_map="balanced")`` calls: it checks the request
before anything loads and returns the step that places the loaded pipeline with accelerate's
big-model utilities (``compute_module_sizes``, ``get_max_memory``, ``dispatch_model``).  Each component
then runs on its device, inputs moved there and outputs moved back by accelerate's hooks.
"""

from __future__ import annotations

from typing import Any, Callable

STRATEGIES = ("balanced",)


def balanced_placement(sizes: dict[str, int], memory: dict[Any, int]) -> dict[str, Any]:
    """``{component: device}`` from component ``sizes`` and free ``memory`` per device (bytes).

    The largest component goes first, onto the device with the most memory; devices are visited in a
    snake order (0, 1, ..., n-1, n-1, ..., 0, 0, 1, ...) so big components spread out; a component
    that does not fit the device whose turn it is goes to ``"cpu"`` (and the turn stays).
    """
    for what, table in (("sizes", sizes), ("memory", memory)):
        if not isinstance(table, dict):
            raise TypeError(f"{what} must be a dict, got {type(table).__name__}")
        bad = {k: v for k, v in table.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0}
        if bad:
            raise ValueError(f"{what} must map to non-negative byte counts; got {bad}")
    if not memory:
        raise ValueError("memory is empty: no device to place components on")
    devices = sorted(memory, key=lambda d: memory[d], reverse=True)
    cycle = devices + devices[::-1]
    free = dict(memory)
    placement: dict[str, Any] = {}
    turn = 0
    for name in sorted(sizes, key=lambda n: sizes[n], reverse=True):
        device = cycle[turn % len(cycle)]
        if sizes[name] > free[device]:
            placement[name] = "cpu"
            continue
        placement[name] = device
        free[device] -= sizes[name]
        turn += 1
    return placement


def _gpu_memory(max_memory: dict | None) -> dict[Any, int]:
    import torch
    from accelerate.utils import get_max_memory

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise ValueError("device_map='balanced' places the pipeline's components on several GPUs, and this machine "
                         "has no CUDA device; load without device_map (or device_map='cpu')")
    if max_memory is not None and not isinstance(max_memory, dict):
        raise TypeError(f"max_memory must be a dict such as {{0: '20GiB', 1: '20GiB'}}, got {type(max_memory).__name__}")
    memory = get_max_memory(max_memory)
    return {k: v for k, v in memory.items() if k not in ("cpu", "disk", "mps")}


def balanced_device_map(device_map: str, max_memory: dict | None = None) -> Callable[[Any], Any]:
    """Check ``device_map`` (and that GPUs exist) now; return ``place(pipe)`` to run once it is loaded."""
    if device_map not in STRATEGIES:
        raise ValueError(f"device_map={device_map!r} for a pipeline: use 'balanced' (whole components spread over "
                         "the GPUs) or a single device such as 'cuda' or 'cpu'")
    memory = _gpu_memory(max_memory)
    if not memory:
        raise ValueError(f"max_memory={max_memory!r} leaves no GPU to place components on")

    def place(pipe: Any) -> Any:
        return dispatch_pipeline(pipe, memory)

    return place


def dispatch_pipeline(pipe: Any, memory: dict[Any, int]) -> Any:
    """Place every module component by :func:`balanced_placement`; sets ``pipe.hf_device_map``."""
    from accelerate import dispatch_model
    from accelerate.utils import compute_module_sizes

    modules = pipe._modules()
    sizes = {name: int(compute_module_sizes(module)[""]) for name, module in modules.items()}
    placement = balanced_placement(sizes, memory)
    for name, device in placement.items():
        dispatch_model(modules[name], device_map={"": device}, force_hooks=True)
    pipe.hf_device_map = placement
    return pipe


def reset_device_map(pipe: Any) -> None:
    """Undo ``device_map="balanced"``: hooks removed, every component back on the CPU, ``hf_device_map = None``."""
    if getattr(pipe, "hf_device_map", None) is None:
        return
    pipe.remove_all_hooks()
    for module in pipe._modules().values():
        module.to("cpu")
    pipe.hf_device_map = None
