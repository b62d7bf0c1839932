"""CUDA-graph replay of a denoiser's forward (the pipeline switch ``Pipeline.enable_cuda_graphs``).

A denoising loop calls the same network on inputs of the same shapes at every step.  On a fast
GPU the step of a small model (SD 1.5 at 512x512) is bound by kernel launches and Python, not by
arithmetic.  :class:`GraphedForward` records the network's kernels once per input signature into
a CUDA graph, and at every later call copies the new inputs into the recorded input buffers and
replays the graph: one launch per step.  The same kernels run on the same data, so outputs are
bit-identical to eager execution.

What it relies on, and what happens otherwise:

* grad mode off (inference).  With grad mode on, calls run eagerly.
* no host synchronisation inside the forward (capture fails with a CUDA error; the project's
  models are sync-free, which ``benchmarks/gpu_bench.py`` checks under ``set_sync_debug_mode``).
* repeated signatures.  The signature is the nesting of the arguments, every tensor's shape and
  dtype, and every other argument's value; each new signature is captured once (a few warm-up
  calls, then the capture).  A timestep passed as a Python number that changes every step would
  capture every step: pass it as a tensor, as the pipelines do.
* tensor inputs may live on the CPU (a scheduler's timestep); they are copied to the graph's
  device, so the network sees them there.
* outputs are cloned out of the graph's buffers, so a caller (a multistep scheduler) may keep
  them across steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten


def _signature_item(leaf: Any) -> Any:
    if isinstance(leaf, torch.Tensor):
        return ("tensor", tuple(leaf.shape), leaf.dtype)
    try:
        hash(leaf)
    except TypeError:
        return ("object", id(leaf))
    return ("value", type(leaf).__name__, leaf)


def _clone_tensors(obj: Any) -> Any:
    """A copy of a forward's output with every tensor cloned (tuples, lists, dicts, dataclass outputs)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _clone_tensors(getattr(obj, f.name))
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, (tuple, list)):
        items = [_clone_tensors(x) for x in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    if isinstance(obj, dict):
        return type(obj)((k, _clone_tensors(v)) for k, v in obj.items())
    return obj


@dataclasses.dataclass
class _Captured:
    inputs: list[torch.Tensor]
    graph: Any
    output: Any


class GraphedForward:
    """Callable that stands in for a module's ``forward`` and replays it from CUDA graphs.

    ``forward`` is the module's original bound ``forward``; ``device`` the CUDA device it runs on;
    ``warmup`` the eager calls (on a side stream) before each capture, which let lazy
    initialisation (cuBLAS handles, autotuning) happen outside the graph.
    """

    def __init__(self, forward: Callable[..., Any], device: torch.device | str, warmup: int = 2):
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be a positive int, got {warmup!r}")
        self.forward = forward
        self.device = device
        self.warmup = warmup
        self._captured: dict[tuple, _Captured] = {}
        self._pool = None

    @property
    def num_graphs(self) -> int:
        """How many input signatures have been captured so far."""
        return len(self._captured)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return self.forward(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        key = (str(spec), tuple(_signature_item(leaf) for leaf in leaves))
        captured = self._captured.get(key)
        if captured is None:
            captured = self._captured[key] = self._capture(leaves, spec)
        else:
            tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
            for buffer, value in zip(captured.inputs, tensors):
                buffer.copy_(value, non_blocking=True)
        captured.graph.replay()
        return _clone_tensors(captured.output)

    def _capture(self, leaves: list, spec) -> _Captured:
        inputs: list[torch.Tensor] = []
        static_leaves = []
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                buffer = torch.empty_like(leaf, device=self.device, memory_format=torch.contiguous_format)
                buffer.copy_(leaf)
                inputs.append(buffer)
                leaf = buffer
            static_leaves.append(leaf)
        args, kwargs = tree_unflatten(static_leaves, spec)
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.forward(*args, **kwargs)
        current.wait_stream(side)
        # One memory pool for all signatures.  Safe in any replay order here: input buffers live
        # outside the pool, and every replay's outputs are cloned before any other graph runs, so
        # one graph overwriting another's (dead) intermediates or stale outputs loses nothing.
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self.forward(*args, **kwargs)
        return _Captured(inputs, graph, output)
