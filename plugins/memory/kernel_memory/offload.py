"""Group offloading: weights live on ``offload_device`` (the CPU) and move to ``onload_device`` in
groups, each just before it runs and back right after (Diffusers' ``enable_group_offload``).

* ``offload_type="block_level"``: the blocks of each ``nn.ModuleList`` / ``nn.Sequential`` child
  (``down_blocks``, ``transformer_blocks`` ...) are taken ``num_blocks_per_group`` at a time; a
  group moves in before its first block runs and out after its last. Everything else (input and
  output layers, embeddings) is one group that stays in for the whole forward of the model.
* ``offload_type="leaf_level"``: each module that holds weights of its own is a group, moved
  around its own forward: the least memory, the most transfers.

The offloaded copy of every weight is kept (pinned when streaming), so moving a group out only
drops its device copy; the weights themselves never change, and with ``onload_device`` equal to
``offload_device`` the outputs are bit-identical to no offloading.

``use_stream=True`` (CUDA only) overlaps transfers with compute: the execution order of the
groups is recorded on the first forward, and from then on, while group ``i`` runs, group ``i+1``
is copied in on a side stream; the compute stream waits for that copy only when it needs it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

OFFLOAD_TYPES = ("block_level", "leaf_level")
_STATE = "_kernel_group_offload"


class Group:
    """Some modules' own tensors, moved together."""

    def __init__(self, modules: list[nn.Module], onload: torch.device, offload: torch.device, stream: Any,
                 non_blocking: bool, record_stream: bool, pin: bool) -> None:
        self.onload, self.stream, self.non_blocking, self.record_stream = onload, stream, non_blocking, record_stream
        self.tensors: list[tuple[torch.Tensor, torch.Tensor]] = []  # (the parameter or buffer, its offloaded copy)
        for module in modules:
            for store in (module._parameters, module._buffers):
                for t in store.values():
                    if t is None:
                        continue
                    copy = t.data.to(offload)
                    if pin and copy.device.type == "cpu":
                        copy = copy.pin_memory()
                    t.data = copy
                    self.tensors.append((t, copy))
        self.onloaded = False
        self.event: Any = None
        self.next: Group | None = None

    def onload_now(self) -> None:
        if self.onloaded:
            if self.event is not None:  # prefetched on the side stream: wait for that copy only
                torch.cuda.current_stream().wait_event(self.event)
                self.event = None
                if self.record_stream:
                    for t, _ in self.tensors:
                        t.data.record_stream(torch.cuda.current_stream())
            return
        for t, copy in self.tensors:
            t.data = copy.to(self.onload, non_blocking=self.non_blocking)
        self.onloaded = True

    def prefetch(self) -> None:
        if self.onloaded or self.stream is None:
            return
        # The side stream first waits for the work queued so far: memory that earlier groups freed
        # may be reused by these copies only once the kernels reading it are done.
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            for t, copy in self.tensors:
                t.data = copy.to(self.onload, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(self.stream)
        self.onloaded = True

    def offload_now(self) -> None:
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        for t, copy in self.tensors:
            t.data = copy
        self.onloaded = False


class GroupOffload:
    """The groups of one model and the hooks that move them."""

    def __init__(self, model: nn.Module, stream: Any) -> None:
        self.model, self.stream = model, stream
        self.groups: list[Group] = []
        self.order: list[Group] | None = None  # recorded on the first forward when streaming
        self.handles: list[Any] = []
        self.top: Group | None = None  # the group of the layers around the blocks (in for the whole forward)

    def hook(self, first: nn.Module, last: nn.Module, group: Group) -> None:
        def before(module, args):
            if self.stream is not None and self.order is not None and group not in self.order:
                self.order.append(group)
            group.onload_now()
            if group.next is not None:
                group.next.prefetch()

        def after(module, args, output):
            group.offload_now()

        self.groups.append(group)
        self.handles.append(first.register_forward_pre_hook(before, prepend=True))
        self.handles.append(last.register_forward_hook(after))

    def add_model_hooks(self) -> None:
        def start(module, args):
            if self.stream is not None and self.order is None and all(g.next is None for g in self.groups):
                self.order = []

        def end(module, args, output):
            if self.order:  # link the groups in the order they ran; prefetching starts next call
                for a, b in zip(self.order, self.order[1:]):
                    a.next = b
                self.order = None

        self.handles.append(self.model.register_forward_pre_hook(start, prepend=True))
        self.handles.append(self.model.register_forward_hook(end))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for g in self.groups:
            g.offload_now()


def _own_tensors(module: nn.Module) -> bool:
    return any(t is not None for t in list(module._parameters.values()) + list(module._buffers.values()))


def apply_group_offloading(module: nn.Module, onload_device: Any, offload_device: Any = "cpu",
                           offload_type: str = "block_level", num_blocks_per_group: int | None = None,
                           non_blocking: bool = False, use_stream: bool = False, record_stream: bool = False,
                           low_cpu_mem_usage: bool = False, **unsupported: Any) -> GroupOffload:
    """Group offloading on any module (see the module docstring)."""
    if unsupported.get("offload_to_disk_path"):
        raise ValueError("offload_to_disk_path is not supported; offload to the CPU (offload_device='cpu')")
    unknown = [k for k, v in unsupported.items() if v is not None and k != "offload_to_disk_path"]
    if unknown:
        raise TypeError(f"enable_group_offload got unexpected arguments: {unknown}")
    if offload_type not in OFFLOAD_TYPES:
        raise ValueError(f"offload_type={offload_type!r}; choose one of {', '.join(OFFLOAD_TYPES)}")
    if offload_type == "block_level" and not (isinstance(num_blocks_per_group, int) and num_blocks_per_group >= 1):
        raise ValueError(f"offload_type='block_level' needs num_blocks_per_group >= 1, got {num_blocks_per_group!r}")
    onload, offload = torch.device(onload_device), torch.device(offload_device)
    stream = None
    if use_stream:
        if onload.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(f"use_stream=True needs a CUDA onload_device; got {onload}")
        stream = torch.cuda.Stream(onload)
    if getattr(module, "hf_quantizer", None) is not None and onload != offload:
        logger.warning("group offloading a quantized model moves its quantized tensors as they are")
    remove_group_offloading(module)
    state = GroupOffload(module, stream)
    pin = stream is not None and not low_cpu_mem_usage

    def group(modules: list[nn.Module]) -> Group:
        return Group(modules, onload, offload, stream, non_blocking or stream is not None, record_stream, pin)

    if offload_type == "leaf_level":
        for m in module.modules():
            if _own_tensors(m):
                state.hook(m, m, group([m]))
    else:
        in_blocks: set[int] = set()
        for child in module.children():
            if isinstance(child, (nn.ModuleList, nn.Sequential)):
                blocks = list(child)
                for i in range(0, len(blocks), num_blocks_per_group):
                    chunk = blocks[i:i + num_blocks_per_group]
                    state.hook(chunk[0], chunk[-1], group([m for b in chunk for m in b.modules()]))
                in_blocks.update(id(m) for b in blocks for m in b.modules())
        rest = [m for m in module.modules() if id(m) not in in_blocks and _own_tensors(m)]
        if rest:
            state.top = group(rest)
            state.hook(module, module, state.top)
    if stream is not None:
        state.add_model_hooks()
    module.__dict__[_STATE] = state
    return state


def remove_group_offloading(module: nn.Module) -> None:
    """Take the hooks away; the weights stay on the offload device."""
    state = module.__dict__.pop(_STATE, None)
    if state is not None:
        state.remove()


def enable_group_offload(target: Any, onload_device: Any, offload_device: Any = "cpu",
                         offload_type: str = "block_level", num_blocks_per_group: int | None = None,
                         non_blocking: bool = False, use_stream: bool = False, record_stream: bool = False,
                         low_cpu_mem_usage: bool = False, offload_to_disk_path: str | None = None,
                         exclude_modules: str | list[str] | None = None, **unsupported: Any) -> None:
    """``model.enable_group_offload(...)`` and ``pipe.enable_group_offload(...)`` (Diffusers' arguments).

    On a pipeline every model component is offloaded, except ``exclude_modules`` (kept whole on
    ``onload_device``, like Diffusers), and the pipeline runs on ``onload_device``.
    """
    kwargs = dict(onload_device=onload_device, offload_device=offload_device, offload_type=offload_type,
                  num_blocks_per_group=num_blocks_per_group, non_blocking=non_blocking, use_stream=use_stream,
                  record_stream=record_stream, low_cpu_mem_usage=low_cpu_mem_usage,
                  offload_to_disk_path=offload_to_disk_path, **unsupported)
    if isinstance(target, nn.Module):
        if exclude_modules is not None:
            raise TypeError("exclude_modules= is for pipelines")
        apply_group_offloading(target, **kwargs)
        return
    exclude = [exclude_modules] if isinstance(exclude_modules, str) else list(exclude_modules or [])
    modules = {k: v for k, v in target.components.items() if isinstance(v, nn.Module)}
    unknown = [e for e in exclude if e not in modules]
    if unknown:
        raise ValueError(f"exclude_modules={unknown} are not model components of this pipeline ({sorted(modules)})")
    target.remove_all_hooks()
    for name, module in modules.items():
        if name in exclude:
            module.to(onload_device)
        else:
            apply_group_offloading(module, **kwargs)
    target._offload_device = torch.device(onload_device)
    target._offload_kind = "group"
