"""Context-parallel plans: which tensors a model splits across ranks, which it gathers, which attention
layers attend over split keys; and ``model.enable_parallelism(config=...)`` that applies one.

A plan maps module paths (``""`` is the model itself) to what happens there, with Diffusers' names:

* ``{"": {"hidden_states": ContextParallelInput(split_dim=1, stream="image"), ...}}``: split a forward
  argument (a tensor, or each tensor of a list) of that module before it runs;
* ``{"pos_embed": ContextParallelInput(split_dim=1, split_output=True, stream="image")}``: split its output;
* ``{"proj_out": ContextParallelOutput(gather_dim=1, stream="image")}``: gather its output, so every
  rank holds the whole result again;
* ``{"attention": {"transformer_blocks.*.attn": ("image", "text"), "*.attn2": "local"}}``: for each
  attention layer (``fnmatch`` on its path), the streams its queries and keys are made of, or
  ``"local"`` when its keys are not split (cross-attention over a replicated text), so it runs unchanged.

Tensors are split into ``world_size`` nearly equal contiguous shards (``torch.tensor_split``), rank
order.  A *stream* names shards that belong together (Flux's latents and their position ids); the split
records each stream's shard sizes, so attention over shards of unequal length needs no exchange of sizes.
Without an ``"attention"`` entry every attention layer is split and every split must be even.

Everything not named stays replicated: each rank runs the same weights on the same timestep, text
and pooled embeddings.  Built-in plans: Flux, SD3 / SD3.5 and PixArt transformers.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from kernel_distributed.attention import ContextParallelAttention
from kernel_distributed.config import context_config
from kernel_distributed.runtime import Mesh, build_mesh, collective


@dataclass(frozen=True)
class ContextParallelInput:
    """Split a module's input argument (or, with ``split_output=True``, its output) along ``split_dim``."""

    split_dim: int
    expected_dims: int | None = None
    split_output: bool = False
    stream: str | None = None


@dataclass(frozen=True)
class ContextParallelOutput:
    """Gather a module's output along ``gather_dim`` from every rank (rank order)."""

    gather_dim: int
    expected_dims: int | None = None
    stream: str | None = None


LOCAL = "local"

_FLUX_PLAN = {
    "": {
        "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, stream="image"),
        "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, stream="text"),
        "img_ids": ContextParallelInput(split_dim=-2, stream="image"),
        "txt_ids": ContextParallelInput(split_dim=-2, stream="text"),
        "controlnet_block_samples": ContextParallelInput(split_dim=1, expected_dims=3, stream="image"),
        "controlnet_single_block_samples": ContextParallelInput(split_dim=1, expected_dims=3, stream="image"),
    },
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3, stream="image"),
    "attention": {"*": ("text", "image")},  # double blocks attend jointly, single blocks over [text, image]
}

_SD3_PLAN = {
    "": {
        "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, stream="text"),
        "block_controlnet_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, stream="image"),
    },
    "pos_embed": ContextParallelInput(split_dim=1, expected_dims=3, split_output=True, stream="image"),
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3, stream="image"),
    "attention": {"transformer_blocks.*.attn": ("image", "text"), "transformer_blocks.*.attn2": ("image",)},
}

_PIXART_PLAN = {
    "pos_embed": ContextParallelInput(split_dim=1, expected_dims=3, split_output=True, stream="image"),
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3, stream="image"),
    "attention": {"transformer_blocks.*.attn1": ("image",), "transformer_blocks.*.attn2": LOCAL},
}

#: Built-in plans by model class name (a model's own ``_cp_plan`` attribute, or ``cp_plan=``, wins).
PLANS: dict[str, dict] = {
    "FluxTransformer2DModel": _FLUX_PLAN,
    "SD3Transformer2DModel": _SD3_PLAN,
    "PixArtTransformer2DModel": _PIXART_PLAN,
}


def plan_for(model: torch.nn.Module, cp_plan: dict | None = None) -> dict:
    if cp_plan is not None:
        if not isinstance(cp_plan, dict):
            raise TypeError(f"cp_plan must be a dict of module path -> split/gather entries, got {type(cp_plan).__name__}")
        return cp_plan
    own = getattr(type(model), "_cp_plan", None)
    if isinstance(own, dict):
        return own
    for cls in type(model).__mro__:
        if cls.__name__ in PLANS:
            return PLANS[cls.__name__]
    raise ValueError(f"{type(model).__name__} has no context-parallel plan; built-in plans: {sorted(PLANS)} "
                     "(or pass cp_plan=)")


# ----------------------------------------------------------------------------- split / gather
def shard_sizes(length: int, parts: int) -> list[int]:
    """Token counts of ``torch.tensor_split(range(length), parts)``: the first ``length % parts`` get one more."""
    return [length // parts + (1 if r < length % parts else 0) for r in range(parts)]


class _State:
    """Per-model context-parallel state: the grid, and the shard sizes each stream got in the current forward."""

    def __init__(self, model_name: str, mesh: Mesh, config, even: bool):
        self.model_name, self.mesh, self.config, self.even = model_name, mesh, config, even
        self.sizes: dict[str, list[int]] = {}
        self.handles: list = []

    def record(self, stream: str, length: int, what: str) -> list[int]:
        world = self.mesh.world_size
        if length < world:
            raise ValueError(f"{self.model_name}: {what} has {length} tokens, fewer than the {world} context-parallel "
                             "ranks")
        sizes = shard_sizes(length, world)
        if self.even and length % world:
            raise ValueError(f"{self.model_name}: {what} has {length} tokens, not divisible by the {world} ranks (a plan "
                             "without an 'attention' entry needs even splits)")
        known = self.sizes.get(stream)
        if known is not None and known != sizes:
            raise ValueError(f"{self.model_name}: {what} has {length} tokens but stream {stream!r} has {sum(known)}")
        self.sizes[stream] = sizes
        return sizes

    def split(self, value: Any, spec: ContextParallelInput, what: str) -> Any:
        if isinstance(value, (list, tuple)):
            return type(value)(self.split(v, spec, f"{what}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, torch.Tensor):
            return value
        if spec.expected_dims is not None and value.ndim != spec.expected_dims:
            return value  # e.g. a 2-D id tensor given where the plan splits 3-D ones: left alone
        dim = spec.split_dim % value.ndim
        stream = spec.stream or what
        self.record(stream, value.shape[dim], what)
        return torch.tensor_split(value, self.mesh.world_size, dim=dim)[self.mesh.rank].contiguous()

    def gather(self, value: torch.Tensor, spec: ContextParallelOutput, what: str) -> torch.Tensor:
        dim = spec.gather_dim % value.ndim
        world = self.mesh.world_size
        sizes = self.sizes.get(spec.stream) if spec.stream else None
        if sizes is None:
            sizes = [value.shape[dim]] * world
        longest = max(sizes)
        padded = value
        if value.shape[dim] < longest:
            pad = list(value.shape)
            pad[dim] = longest - value.shape[dim]
            padded = torch.cat([value, value.new_zeros(pad)], dim=dim)
        parts = [torch.empty_like(padded) for _ in range(world)]
        with collective(f"gathering {what} of {self.model_name}"):
            dist.all_gather(parts, padded.contiguous())
        return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim)

    def sizes_of(self, streams: tuple[str, ...], name: str):
        def sizes() -> list[int]:
            missing = [s for s in streams if s not in self.sizes]
            if missing:
                raise ValueError(f"{self.model_name}: attention layer {name} attends over stream(s) {missing} that "
                                 "this forward did not split; check the context-parallel plan")
            return [sum(col) for col in zip(*(self.sizes[s] for s in streams))]

        return sizes


def _input_hook(state: _State, specs: dict, signature: inspect.Signature | None, path: str):
    def hook(module, args, kwargs):
        if signature is None:
            values = kwargs
        else:
            bound = signature.bind_partial(*args, **kwargs)
            values = bound.arguments
            extra = next((values[p.name] for p in signature.parameters.values()
                          if p.kind is p.VAR_KEYWORD and p.name in values), {})
        changed = False
        for name, spec in specs.items():
            holder = values if name in values else (extra if signature is not None and name in extra else None)
            if holder is not None and holder[name] is not None:
                holder[name] = state.split(holder[name], spec, f"{path or type(module).__name__}.{name}")
                changed = True
        if not changed:
            return None
        return (args, kwargs) if signature is None else (tuple(bound.args), dict(bound.kwargs))

    return hook


def _output_split_hook(state: _State, spec: ContextParallelInput, path: str):
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (state.split(output[0], spec, f"{path} output"),) + output[1:]
        return state.split(output, spec, f"{path} output")

    return hook


def _gather_hook(state: _State, spec: ContextParallelOutput, path: str):
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (state.gather(output[0], spec, f"{path} output"),) + output[1:]
        return state.gather(output, spec, f"{path} output")

    return hook


def _reset_hook(state: _State):
    def hook(module, args, kwargs):
        state.sizes = {}

    return hook


def _attention_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "attend") and hasattr(m, "set_processor")]


def _match(patterns: dict, name: str) -> Any:
    for pattern, streams in patterns.items():
        if fnmatch.fnmatchcase(name, pattern):
            return streams
    return None


# ----------------------------------------------------------------------------- enabling
def enable_parallelism(model: torch.nn.Module, *args: Any, config: Any = None, cp_plan: dict | None = None) -> None:
    """``model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))``: split the model's token
    sequence across the ranks of the default process group (see the module docstring).

    Call it on every rank, after ``torch.distributed.init_process_group`` (or
    :func:`kernel_distributed.init_distributed`), with the model on this rank's device.  Every rank then
    feeds the same inputs and gets the whole output back.
    """
    if args:
        raise TypeError("enable_parallelism takes keyword arguments only: enable_parallelism(config=..., cp_plan=None)")
    if config is None:
        raise TypeError("enable_parallelism needs config=ContextParallelConfig(ulysses_degree=..., ring_degree=...)")
    cp = context_config(config)
    if getattr(model, "_parallel_config", None) is not None:
        raise RuntimeError(f"context parallelism is already enabled on this {type(model).__name__}; call "
                           "kernel_distributed.disable_parallelism(model) first")
    plan = plan_for(model, cp_plan)
    patterns = plan.get("attention")
    layers = _attention_layers(model)
    assignments: list[tuple[str, torch.nn.Module, Any]] = []
    for name, layer in layers:
        streams = _match(patterns, name) if patterns is not None else ("*",)
        if streams is None:
            raise ValueError(f"the context-parallel plan of {type(model).__name__} does not say how attention layer "
                             f"{name!r} is split; add it to the plan's 'attention' entry (streams or 'local')")
        heads = getattr(layer, "heads", None)
        if streams != LOCAL and heads is not None and heads % cp.ulysses_degree:
            raise ValueError(f"ulysses_degree={cp.ulysses_degree} must divide the head count of {name} ({heads})")
        assignments.append((name, layer, streams))
    modules = dict(model.named_modules())
    for path, entry in plan.items():
        if path == "attention":
            continue
        if path not in modules:
            raise ValueError(f"the context-parallel plan names module {path!r}, which {type(model).__name__} lacks")
        if isinstance(entry, ContextParallelInput) and not entry.split_output:
            raise ValueError(f"plan entry {path!r}: a module-level ContextParallelInput splits the output; "
                             "set split_output=True or give a dict of argument names")
        if isinstance(entry, dict):
            bad = [k for k, v in entry.items() if not isinstance(v, ContextParallelInput)]
            if bad:
                raise TypeError(f"plan entry {path!r}: {bad} must map to ContextParallelInput")
        elif not isinstance(entry, (ContextParallelInput, ContextParallelOutput)):
            raise TypeError(f"plan entry {path!r} must be a ContextParallelInput, a ContextParallelOutput or a dict of "
                            f"them, got {type(entry).__name__}")

    mesh = build_mesh(cp.ring_degree, cp.ulysses_degree)
    state = _State(type(model).__name__, mesh, cp, even=patterns is None)
    handles = state.handles
    handles.append(model.register_forward_pre_hook(_reset_hook(state), with_kwargs=True))
    for path, entry in plan.items():
        if path == "attention":
            continue
        module = modules[path]
        if isinstance(entry, ContextParallelOutput):
            handles.append(module.register_forward_hook(_gather_hook(state, entry, path)))
        elif isinstance(entry, ContextParallelInput):
            handles.append(module.register_forward_hook(_output_split_hook(state, entry, path)))
        else:
            try:
                signature = inspect.signature(module.forward)
            except (TypeError, ValueError):
                signature = None
            handles.append(module.register_forward_pre_hook(_input_hook(state, entry, signature, path),
                                                            with_kwargs=True))
    for name, layer, streams in assignments:
        if streams == LOCAL:
            continue
        sizes = None if patterns is None else state.sizes_of(tuple(streams), name)  # None: even splits
        layer.context_parallel = ContextParallelAttention(name, mesh, cp, sizes)
    model._parallel_config = config
    model._context_parallel_state = state


def disable_parallelism(model: torch.nn.Module) -> None:
    """Remove what :func:`enable_parallelism` installed: the model runs on one process again."""
    state = getattr(model, "_context_parallel_state", None)
    if state is None:
        return
    for handle in state.handles:
        handle.remove()
    for _, layer in _attention_layers(model):
        if "context_parallel" in layer.__dict__:
            del layer.__dict__["context_parallel"]
    model._parallel_config = None
    model._context_parallel_state = None
