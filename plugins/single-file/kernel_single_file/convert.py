"""Conversion both ways, driven by the key maps of :mod:`kernel_single_file.layouts`.

Original -> Diffusers: the component is built on the meta device from its config, and each of its
weights is looked up in the file (each original tensor read once, fused tensors split by the target
shapes).  Keys the component does not need (``model_ema.*``, ``betas``, ``alphas_cumprod``, optimiser
state, other components) are never read; a file that already has the component's Diffusers names (ControlNets and
VAEs are often shared so) is read as it is.  Diffusers -> original: the same maps, fused parts concatenated.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import torch

from kernel_single_file.families import CLIP_L, FAMILIES, Component
from kernel_single_file.layouts import Source

OPTIONS = ("extract_ema",)


def _transform(t: torch.Tensor, transform: str | None, to_original: bool) -> torch.Tensor:
    if transform == "swap":
        first, second = t.chunk(2, dim=0)
        return torch.cat([second, first], dim=0)
    if transform == "T":
        return t.T.contiguous()
    if transform == "conv" and to_original:
        return t.reshape(*t.shape, *([1] * (4 - t.dim())))
    return t


def config_of(model: torch.nn.Module) -> dict:
    """A model's config as a dict (ours are mappings; transformers' have ``to_dict``)."""
    config = model.config
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _ema_key(key: str) -> str:
    # LDM's EMA copy flattens the module path: model.diffusion_model.a.b -> model_ema.diffusion_modelab
    return "model_ema." + key.removeprefix("model.").replace(".", "")


def to_diffusers(family: str, component: str, checkpoint: Mapping, model: torch.nn.Module,
                 options: dict | None = None) -> dict[str, torch.Tensor] | None:
    """``component`` of a ``family`` checkpoint as a state dict for ``model`` (built on the meta device from the
    component's config), or ``None`` when the file lacks it."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"from_single_file got unexpected arguments {unknown}; conversion options: {list(OPTIONS)}")
    spec: Component | None = FAMILIES.get(family, {}).get(component)
    if spec is None:
        return None
    shapes = {k: v.shape for k, v in model.state_dict(keep_vars=True).items()}  # (detaching meta tensors is slow)
    config = config_of(model)
    sources = {k: spec.layout(k, config) for k in shapes}
    keys = checkpoint.keys()

    def full(prefix: str, key: str) -> str:
        return _ema_key(prefix + key) if options.get("extract_ema") and prefix == "model.diffusion_model." else prefix + key

    hits = {p: sum(full(p, s.key) in keys for s in sources.values() if s) for p in spec.prefixes}
    prefix = max(spec.prefixes, key=lambda p: hits[p])
    found, native = hits[prefix], sum(k in keys for k in shapes)
    if native > found:  # a file with Diffusers' own names (ControlNets are often shared so)
        sources, prefix, found = {k: Source(k) for k in shapes}, "", native
    if found == 0:
        if options.get("extract_ema") and component == "unet":
            raise ValueError(f"extract_ema=True: {checkpoint} holds no EMA weights (model_ema.*)")
        return None
    parts: dict[str, list[str]] = defaultdict(list)
    for key, source in sources.items():
        if source is not None and source.part is not None:
            parts[source.key].append(key)
    out: dict[str, torch.Tensor] = {}
    read: dict[str, torch.Tensor] = {}
    for key, source in sources.items():
        name = full(prefix, source.key) if source is not None else None
        if name is None or name not in keys or key in out:
            continue  # a missing weight is reported by the loader, naming it
        tensor = read[name] if name in read else checkpoint[name]
        read[name] = tensor  # tied weights (T5's embedding) share one tensor
        if source.part is None:
            out[key] = _fit(_transform(tensor, source.transform, False), shapes[key])
            continue
        group = sorted(parts[source.key], key=lambda k: sources[k].part)
        sizes = [shapes[k][0] for k in group]
        if sum(sizes) != tensor.shape[0]:
            _mismatch(checkpoint, family, component, name, tensor.shape, f"{len(sizes)} parts of {sizes}")
        for member, piece in zip(group, torch.split(tensor, sizes, dim=0)):
            out[member] = _fit(_transform(piece, sources[member].transform, False), shapes[member])
    for key, tensor in out.items():
        shape = getattr(tensor, "logical_shape", tensor.shape)  # a quantized tensor's (GGUF's) decoded shape
        if tuple(shape) != tuple(shapes[key]):
            _mismatch(checkpoint, family, component, key, shape, tuple(shapes[key]))
    if spec is CLIP_L and "text_projection.weight" in shapes and "text_projection.weight" not in out:
        out["text_projection.weight"] = torch.eye(*shapes["text_projection.weight"])  # SD3's CLIP-L: identity
    return out


def _mismatch(checkpoint, family: str, component: str, key: str, got, want) -> None:
    raise ValueError(f"{checkpoint}: the {component} weights do not fit the {component} config ({key}: "
                     f"{tuple(got)} in the file, {want} in the config); the file is not the standard {family} "
                     "architecture: pass config=<a Diffusers folder with its configs>")


def _fit(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``t`` in the target shape where only singleton dimensions differ (1x1 convolutions against linears)."""
    return t.reshape(shape) if t.shape != shape and t.numel() == shape.numel() else t


def to_original(family: str, states: dict[str, dict[str, torch.Tensor]], configs: dict[str, dict]) -> dict:
    """Diffusers state dicts of a family's components (by component name) as one original-layout state dict."""
    out: dict[str, torch.Tensor] = {}
    for component, state in states.items():
        spec = FAMILIES[family].get(component)
        if spec is None:
            raise ValueError(f"a {family} single file has no place for {component!r}; its components are "
                             f"{sorted(FAMILIES[family])}")
        fused: dict[str, list] = defaultdict(list)
        for key, tensor in state.items():
            source = spec.layout(key, configs[component])
            if source is None:
                raise ValueError(f"{component}: no original-layout name for {key!r} in a {family} file")
            name = spec.prefixes[0] + source.key
            if source.part is not None:
                fused[name].append((source.part, tensor))
            elif name not in out:  # tied weights (T5's embedding) map to one name
                out[name] = _transform(tensor, source.transform, True).contiguous()
        for name, pieces in fused.items():
            out[name] = torch.cat([t for _, t in sorted(pieces, key=lambda p: p[0])], dim=0)
    return out
