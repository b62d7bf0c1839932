"""Flux's original (Black Forest Labs) layer names, for kohya-ss and XLabs LoRA files.

The reference model (black-forest-labs/flux, ``src/flux/model.py``) names its blocks
``double_blocks.<i>`` / ``single_blocks.<i>`` and fuses projections that our
``FluxTransformer2DModel`` (Diffusers' names) keeps apart: ``img_attn.qkv`` is ``attn.to_q``,
``to_k`` and ``to_v`` stacked on the output axis, and a single block's ``linear1`` is those three
and ``proj_mlp``.  A LoRA on a fused projection adds ``up @ down`` whose output rows are stacked the
same way, so it is one LoRA per part: the same ``down`` and that part's rows of ``up``.  The final
layer's modulation emits ``(shift, scale)`` where ``norm_out.linear`` emits ``(scale, shift)``.

:func:`original_names` reads the part sizes from the model's own layers, so it fits any Flux size.
"""

from __future__ import annotations

import dataclasses

import torch.nn as nn


@dataclasses.dataclass(frozen=True)
class Target:
    """One module a LoRA layer name stands for; ``rows``: the ``(start, stop)`` row ranges of the LoRA's
    ``up`` weight that belong to it, in order (``None``: all of them)."""

    path: str
    rows: tuple[tuple[int, int], ...] | None = None


_DOUBLE = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn.proj": ("attn.to_out.0",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "txt_mod.lin": ("norm1_context.linear",),
}
_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}


def _stacked(paths: tuple[str, ...], modules: dict[str, nn.Module]) -> tuple[Target, ...] | None:
    """Targets for ``paths`` stacked on the output axis in this order, or ``None`` when one is missing."""
    if not all(isinstance(modules.get(p), nn.Linear) for p in paths):
        return None
    if len(paths) == 1:
        return (Target(paths[0]),)
    out, start = [], 0
    for path in paths:
        stop = start + modules[path].out_features
        out.append(Target(path, ((start, stop),)))
        start = stop
    return tuple(out)


def is_flux(modules: dict[str, nn.Module]) -> bool:
    return "x_embedder" in modules and "context_embedder" in modules and (
        "transformer_blocks.0.attn.add_q_proj" in modules or "single_transformer_blocks.0.proj_mlp" in modules)


def original_names(modules: dict[str, nn.Module]) -> dict[str, tuple[Target, ...]]:
    """``{original dotted name: targets}`` for a Flux transformer's adaptable ``modules`` (else ``{}``)."""
    if not is_flux(modules):
        return {}
    table: dict[str, tuple[Target, ...]] = {}
    blocks = {("double_blocks", "transformer_blocks"): _DOUBLE, ("single_blocks", "single_transformer_blocks"): _SINGLE}
    for (original, ours), names in blocks.items():
        indices = sorted({int(p.split(".")[1]) for p in modules if p.startswith(ours + ".")})
        for i in indices:
            for name, parts in names.items():
                targets = _stacked(tuple(f"{ours}.{i}.{part}" for part in parts), modules)
                if targets:
                    table[f"{original}.{i}.{name}"] = targets
    for name, path in _TOP.items():
        if isinstance(modules.get(path), nn.Linear):
            table[name] = (Target(path),)
    norm = modules.get("norm_out.linear")
    if isinstance(norm, nn.Linear):
        half = norm.out_features // 2
        table["final_layer.adaLN_modulation.1"] = (Target("norm_out.linear", ((half, 2 * half), (0, half))),)
    return table
