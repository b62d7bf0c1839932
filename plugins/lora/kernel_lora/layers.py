"""LoRA layers in a model, through peft: inject, weigh, switch, merge, remove.

peft's layer classes hold the adapters.  :func:`inject` builds them with peft's per-layer dispatch for
exactly the layers a LoRA names (empty, then given its tensors), instead of peft's model-level
``inject_adapter_in_model`` + ``set_peft_model_state_dict``, which walk the whole model several times
and initialise weights only to overwrite them (that path stays, for tensor-parallel base layers).
This module adds what a pipeline needs around them: one adapter's exact per-layer ranks and alphas,
activation and weights by name, and removal that gives back the original modules (the same
``nn.Linear`` objects, so weights and state-dict keys are exactly as before).
"""

from __future__ import annotations

import collections
import copy
import gc
import re
import warnings
from typing import Iterable, Mapping

import torch
import torch.nn as nn

from kernel_lora.formats import LoraWeight
from kernel_lora.names import is_tuner_layer


def has_adapters(model: nn.Module | None) -> bool:
    """Whether peft put adapters into ``model`` (it records them in ``model.peft_config``)."""
    return isinstance(getattr(model, "peft_config", None), dict)


def tuner_layers(model: nn.Module | None, everywhere: bool = False) -> list[tuple[str, nn.Module]]:
    """``(path, layer)`` of every peft layer in ``model`` (``everywhere``: look even without ``peft_config``)."""
    if model is None or not (everywhere or has_adapters(model)):
        return []
    return [(path, m) for path, m in model.named_modules() if is_tuner_layer(m)]


def adapter_names(model: nn.Module | None) -> list[str]:
    """The adapters loaded into ``model``, in loading order."""
    return list(model.peft_config) if has_adapters(model) else []


def active_adapters(model: nn.Module | None) -> list[str]:
    if has_adapters(model):
        for m in model.modules():
            if is_tuner_layer(m):
                return list(m.active_adapters)
    return []


def _most_common(values: Iterable):
    return collections.Counter(values).most_common(1)[0][0]


def _rank_alpha(w: LoraWeight) -> tuple[int, float]:
    return w.rank, (w.alpha if w.alpha is not None else float(w.rank))


def lora_config(layers: Mapping[str, LoraWeight]):
    """A peft ``LoraConfig`` that gives every layer its own rank and alpha (exact-name patterns for the exceptions)."""
    from peft import LoraConfig

    pairs = {path: _rank_alpha(w) for path, w in layers.items()}
    r = _most_common(v[0] for v in pairs.values())
    alpha = _most_common(v[1] for v in pairs.values())
    # "^" anchors the pattern at the start of the layer name: peft otherwise matches name suffixes.
    rank_pattern = {f"^{re.escape(p)}": v[0] for p, v in pairs.items() if v[0] != r}
    alpha_pattern = {f"^{re.escape(p)}": v[1] for p, v in pairs.items() if v[1] != alpha}
    return LoraConfig(r=r, lora_alpha=alpha, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
                      target_modules=sorted(layers), lora_bias=any(w.up_bias is not None for w in layers.values()),
                      inference_mode=True)


def _lora_state(layers: Mapping[str, LoraWeight], reference: Mapping[str, nn.Module]):
    """``{path: {"lora_A.weight": ..., "lora_B.weight": ..., ["lora_B.bias": ...]}}`` in each base layer's device and
    dtype (a quantized base layer's int8 or packed 4-bit weight is no dtype for LoRA: those keep theirs)."""
    out = {}
    for path, w in layers.items():
        base = reference[path].weight
        dtype = base.dtype if base.is_floating_point() else None
        tensors = {"lora_A.weight": w.down.to(device=base.device, dtype=dtype),
                   "lora_B.weight": w.up.to(device=base.device, dtype=dtype)}
        if w.up_bias is not None:
            tensors["lora_B.bias"] = w.up_bias.to(device=base.device, dtype=dtype)
        out[path] = tensors
    return out


def inject(model: nn.Module, adapter_name: str, layers: Mapping[str, LoraWeight], reference: Mapping[str, nn.Module],
           through_peft_model: bool | None = None) -> None:
    """Add adapter ``adapter_name`` with ``layers`` (``{module path: weights}``, already checked) to ``model``.

    peft's own layer classes hold the adapter (built by peft's per-layer dispatch, so bitsandbytes and other
    quantized base layers get peft's layers for them), created for exactly the given paths, without random
    initialisation, and given the LoRA tensors directly; ``model.peft_config[adapter_name]`` records the
    :func:`lora_config`.  Each tensor goes to its base layer's device and dtype.  The base parameters keep their
    ``requires_grad`` flags (peft would freeze them).

    ``through_peft_model``: build the adapter with peft's model-level ``inject_adapter_in_model`` and
    ``set_peft_model_state_dict`` instead (slower: it walks the whole model several times); ``None`` picks
    that only where the direct path cannot mirror peft (tensor-parallel base layers).
    """
    if through_peft_model is None:
        through_peft_model = _needs_peft_model(model, reference)
    if through_peft_model:
        _inject_through_peft(model, adapter_name, layers, reference)
    else:
        _inject_direct(model, adapter_name, layers, reference)


def _needs_peft_model(model: nn.Module, reference: Mapping[str, nn.Module]) -> bool:
    """Whether peft's model-level injection must be used: it adds tensor-parallel hooks, the direct path does not
    (nor does it know a peft without the per-layer helpers it calls)."""
    from peft.tuners.lora.layer import LoraLayer

    if getattr(model, "_tp_size", None) or not hasattr(LoraLayer, "_get_base_layer_device_and_dtype"):
        return True
    return any(getattr(m, "_hf_tp_plan", None) is not None for m in reference.values())


def _dispatch_kwargs(model: nn.Module, config) -> dict:
    """What peft's ``LoraModel._create_and_replace`` passes its layer dispatchers, model-wide (computed once)."""
    import operator

    from peft.tuners.tuners_utils import get_device_map
    from peft.utils.other import get_quantization_config

    kwargs = {
        "loaded_in_8bit": getattr(model, "is_loaded_in_8bit", False),
        "loaded_in_4bit": getattr(model, "is_loaded_in_4bit", False),
        "ephemeral_gpu_offload": config.runtime_config.ephemeral_gpu_offload,
        "parameter_name": None,
        "tied_adapter": {},
        "device_map": get_device_map(model),
    }
    try:
        kwargs["get_apply_tensor_subclass"] = operator.attrgetter(
            "hf_quantizer.quantization_config.get_apply_tensor_subclass")(model)
    except AttributeError:
        pass
    for method in ("gptq", "aqlm", "awq"):
        quantization_config = get_quantization_config(model, method=method)
        if quantization_config is not None:
            kwargs[f"{method}_quantization_config"] = quantization_config
    return kwargs


@torch.no_grad()
def _inject_direct(model: nn.Module, adapter_name: str, layers: Mapping[str, LoraWeight],
                   reference: Mapping[str, nn.Module]) -> None:
    """peft's LoRA layers on exactly ``layers``' paths, built empty (meta) and given the LoRA tensors.

    What peft's model-level injection does around its per-layer ``_create_and_replace`` and that matters
    here is kept: the config recorded in ``model.peft_config``, a fused LoRA layer unfused (with peft's
    warning) when another adapter comes in, the new adapter's parameters frozen (inference mode).  Its walks
    over every module for matching, freezing and re-loading by state-dict key are what this path saves.
    """
    from peft.tuners.lora.layer import LoraLayer
    from peft.tuners.lora.model import LoraModel
    from peft.utils.integrations import init_empty_weights

    config = lora_config(layers)
    # the layers skip peft's random initialisation (of meta tensors, replaced below); the model records ``config``
    build = copy.copy(config)
    build.init_lora_weights = False
    had_adapters = has_adapters(model)
    if had_adapters:
        model.peft_config[adapter_name] = config
    else:
        model.peft_config = {adapter_name: config}
    shared = _dispatch_kwargs(model, config)
    gc_was_enabled = gc.isenabled()
    # thousands of small objects and no garbage: the cyclic collector would rescan the whole model many times
    gc.disable()
    try:
        if had_adapters:
            _unfuse_lora_layers(model, LoraLayer)
        built = []
        with init_empty_weights():
            for path, w in layers.items():
                r, alpha = _rank_alpha(w)
                parent_path, _, child = path.rpartition(".")
                parent = model.get_submodule(parent_path) if parent_path else model
                target = getattr(parent, child)
                if isinstance(target, LoraLayer):
                    # another LoRA adapter is there already: peft adds this one to the same layer
                    target.update_layer(adapter_name, r, lora_alpha=alpha, target_name=path, config=build)
                    layer = target
                else:
                    layer = LoraModel._create_new_module(build, adapter_name, target, r=r, lora_alpha=alpha,
                                                         target_name=path, **shared)
                    setattr(parent, child, layer)
                built.append((path, w, layer))
        # outside init_empty_weights: it would put the assigned parameters on the meta device
        for path, w, layer in built:
            _assign(layer, adapter_name, path, w)
    finally:
        if gc_was_enabled:
            gc.enable()


def _unfuse_lora_layers(model: nn.Module, lora_layer: type) -> None:
    """As peft's injection does before it activates the new adapter: unmerge every fused LoRA layer."""
    for module in model.modules():
        if isinstance(module, lora_layer) and module.merged:
            warnings.warn("Adapter cannot be set when the model is merged. Unmerging the model first.")
            module.unmerge()


def _assign(layer: nn.Module, adapter_name: str, path: str, w: LoraWeight) -> None:
    """Put ``w`` into ``layer``'s (empty) adapter parameters: shapes checked, frozen (inference mode), on the device
    and in the dtype peft keeps the adapter in (the base layer's; a 4-bit layer's compute dtype; an integer
    base weight's dtype is no dtype for LoRA, which keeps its own)."""
    device, dtype = layer._get_base_layer_device_and_dtype(layer.get_base_layer())
    if dtype is not None and not (dtype.is_floating_point or dtype.is_complex):
        dtype = None
    a, b = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
    tensors = [(a, "weight", w.down), (b, "weight", w.up)]
    if b.bias is not None:
        # the adapter has biases elsewhere (one config for all its layers): none here is a zero one
        tensors.append((b, "bias", w.up_bias if w.up_bias is not None else torch.zeros(b.bias.shape, dtype=w.up.dtype)))
    for module, name, tensor in tensors:
        current = getattr(module, name)
        if current is None or tuple(current.shape) != tuple(tensor.shape):
            key = f"lora_{'A' if module is a else 'B'}.{name}"
            shape = None if current is None else tuple(current.shape)
            raise RuntimeError(f"{path}: peft's layer has {key} of shape {shape}, the LoRA gives {tuple(tensor.shape)}")
        tensor = tensor.to(device=device, dtype=dtype if dtype is not None else tensor.dtype)
        setattr(module, name, nn.Parameter(tensor, requires_grad=False))


def _inject_through_peft(model: nn.Module, adapter_name: str, layers: Mapping[str, LoraWeight],
                         reference: Mapping[str, nn.Module]) -> None:
    """The same adapter through peft's model-level ``inject_adapter_in_model`` + ``set_peft_model_state_dict``."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    state = {f"{path}.{key}": t for path, tensors in _lora_state(layers, reference).items()
             for key, t in tensors.items()}
    grads = {id(p): p.requires_grad for p in model.parameters()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*peft_config.*")
        inject_adapter_in_model(lora_config(layers), model, adapter_name=adapter_name, low_cpu_mem_usage=True)
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name, low_cpu_mem_usage=True)
    missing = [k for k in result.missing_keys if f".{adapter_name}." in k]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"peft did not take every LoRA weight (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    for p in model.parameters():
        flag = grads.get(id(p))
        if flag is not None and p.requires_grad != flag:
            p.requires_grad_(flag)


def remove(model: nn.Module, adapter_name: str) -> None:
    """Delete adapter ``adapter_name`` from ``model``; layers left without adapters become their base layers again."""
    for _, layer in tuner_layers(model, everywhere=True):
        # every layer: one without the adapter may still list it as active
        layer.delete_adapter(adapter_name)
    unwrap(model, only_empty=True)
    config = getattr(model, "peft_config", None)
    if isinstance(config, dict):
        config.pop(adapter_name, None)
        if not config:
            del model.peft_config


def unwrap(model: nn.Module, only_empty: bool = False) -> None:
    """Put each peft layer's base layer back in its place (all of them, or those with no adapter left).

    A merged (fused) adapter stays in the base weights, as with Diffusers' ``unload_lora_weights``.
    """
    for path, layer in tuner_layers(model, everywhere=True):
        if only_empty and any(len(getattr(layer, n)) for n in layer.adapter_layer_names):
            continue
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, child, layer.get_base_layer())
    if not only_empty and hasattr(model, "peft_config"):
        del model.peft_config


def set_active(model: nn.Module, names: list[str], weights: list[float | dict] | None = None) -> None:
    """Activate ``names`` (in every layer that has them) with adapter ``weights`` (1 each by default).

    A weight may be a dict of layer-name substrings to weights (``{"down_blocks.1": 0.5}``); layers
    it does not name get 1.
    """
    weights = weights if weights is not None else [1.0] * len(names)
    for path, layer in tuner_layers(model):
        layer.set_adapter(names, inference_mode=True)
        for name, weight in zip(names, weights):
            layer.set_scale(name, _layer_weight(weight, path))


def _layer_weight(weight, path: str) -> float:
    if not isinstance(weight, dict):
        return 1.0 if weight is None else float(weight)
    for part, value in weight.items():
        if part in path:
            return 1.0 if value is None else float(value)
    return 1.0


def set_enabled(model: nn.Module, enabled: bool) -> None:
    for _, layer in tuner_layers(model):
        layer.enable_adapters(enabled)


def holds(layer: nn.Module, adapter_name: str) -> bool:
    """Whether a peft layer (LoRA, LoHa, LoKr) has weights for ``adapter_name``."""
    return any(adapter_name in getattr(layer, attr) for attr in layer.adapter_layer_names)


def merge(model: nn.Module, scale: float, adapter_names: list[str] | None, safe: bool) -> set[str]:
    """Fuse the active (or named) adapters into the base weights at ``scale``; returns the adapters merged."""
    merged: set[str] = set()
    for _, layer in tuner_layers(model):
        names = [n for n in (adapter_names or layer.active_adapters) if holds(layer, n)]
        if not hasattr(layer, "_kernel_lora_unfused_scaling"):
            # unmerge subtracts with the scaling in force, so the fused one stays until then
            layer._kernel_lora_unfused_scaling = dict(layer.scaling)
        for name in names:
            if name not in layer.merged_adapters:
                layer.scaling[name] *= scale
        layer.merge(safe_merge=safe, adapter_names=names)
        merged.update(layer.merged_adapters)
    return merged


def unmerge(model: nn.Module) -> None:
    for _, layer in tuner_layers(model):
        layer.unmerge()
        saved = getattr(layer, "_kernel_lora_unfused_scaling", None)
        if saved is not None:
            layer.scaling.clear()
            layer.scaling.update(saved)
            del layer._kernel_lora_unfused_scaling


def merged_adapters(model: nn.Module | None) -> set[str]:
    out: set[str] = set()
    for _, layer in tuner_layers(model):
        out.update(layer.merged_adapters)
    return out


# ----------------------------------------------------------------------------- hot-swapping
def _base_scaling(layer: nn.Module, name: str) -> float:
    """The adapter's ``alpha / rank`` in ``layer`` (its weight-1 scaling), as peft computes it."""
    r, alpha = layer.r[name], layer.lora_alpha[name]
    return alpha / r**0.5 if layer.use_rslora.get(name, False) else alpha / r


def hotswap_problems(model: nn.Module, adapter_name: str, layers: Mapping[str, LoraWeight]) -> list[str]:
    """Why ``layers`` cannot replace adapter ``adapter_name``'s weights in place (empty: they can).

    In place means the same parameters keep their shapes: the new LoRA must adapt exactly the layers the
    adapter adapts, each with at most the rank of its slot (a smaller rank is zero-padded, which changes
    nothing), with a bias only where the slot has one, and the adapter must not be fused.
    """
    problems = []
    other = sorted({type(layer).__module__.split(".")[-2] for _, layer in tuner_layers(model)
                    if not hasattr(layer, "lora_A") and holds(layer, adapter_name)})
    if other:
        return [f"adapter {adapter_name!r} is a LyCORIS ({', '.join(other)}) adapter; hot-swapping takes LoRA only"]
    slots = {path: layer for path, layer in tuner_layers(model) if adapter_name in layer.lora_A}
    missing, extra = sorted(set(slots) - set(layers)), sorted(set(layers) - set(slots))
    if missing or extra:
        problems.append(f"the new LoRA adapts other layers: {len(extra)} the adapter does not ({extra[:3]}), "
                        f"{len(missing)} it leaves out ({missing[:3]})")
    for path in sorted(set(slots) & set(layers)):
        layer, w = slots[path], layers[path]
        if adapter_name in layer.merged_adapters:
            problems.append(f"{path}: the adapter is fused into the weights; unfuse_lora() first")
            break
        slot = layer.r[adapter_name]
        if w.rank > slot:
            problems.append(f"{path}: rank {w.rank} is larger than the loaded adapter's {slot} (call "
                            "pipe.enable_lora_hotswap(target_rank=...) before loading the first LoRA)")
        if w.up_bias is not None and layer.lora_B[adapter_name].bias is None:
            problems.append(f"{path}: the new LoRA has a bias (lora_B.bias) and the loaded adapter has none")
    return problems


@torch.no_grad()
def hotswap(model: nn.Module, adapter_name: str, layers: Mapping[str, LoraWeight]) -> None:
    """Write ``layers`` into adapter ``adapter_name``'s parameters in place (checked by :func:`hotswap_problems`).

    Parameters keep their identity, shape, device and dtype, and each layer keeps its ``scaling``, so a
    compiled model runs on without recompiling: a new ``alpha / rank`` is folded into ``up`` (and its bias),
    and a smaller rank fills the first rows of the slot, the rest zero.
    """
    for path, layer in tuner_layers(model):
        w = layers.get(path)
        if w is None or adapter_name not in getattr(layer, "lora_A", ()):
            continue
        a, b = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
        ratio = w.scale / _base_scaling(layer, adapter_name)
        r = w.rank
        a.weight.zero_()
        a.weight[:r].copy_(w.down.reshape(r, *a.weight.shape[1:]))
        b.weight.zero_()
        b.weight[:, :r].copy_((w.up.to(torch.float32) * ratio).reshape(b.weight.shape[0], r, *b.weight.shape[2:]))
        if b.bias is not None:
            b.bias.zero_()
            if w.up_bias is not None:
                b.bias.copy_(w.up_bias.to(torch.float32) * ratio)


def _padded(module: nn.Module, rank: int, axis: int) -> nn.Module:
    """A copy of a LoRA factor (``lora_A``: ``axis`` 0, ``lora_B``: ``axis`` 1) with ``rank`` along ``axis``, zero-filled."""
    weight = module.weight
    shape = list(weight.shape)
    shape[axis] = rank
    data = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
    data.narrow(axis, 0, weight.shape[axis]).copy_(weight.detach())
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    new.weight = nn.Parameter(data, requires_grad=weight.requires_grad)
    if isinstance(module, nn.Linear):
        setattr(new, "out_features" if axis == 0 else "in_features", rank)
    else:
        setattr(new, "out_channels" if axis == 0 else "in_channels", rank)
    return new


def pad_ranks(model: nn.Module, target_rank: int, adapter_names: Iterable[str] | None = None) -> None:
    """Zero-pad the adapters' LoRA factors to ``target_rank`` (outputs unchanged), so a later hot-swap of a LoRA
    of rank up to ``target_rank`` fits the same parameters."""
    wanted = None if adapter_names is None else set(adapter_names)
    for _, layer in tuner_layers(model):
        for name in list(getattr(layer, "lora_A", ())):
            r = layer.r[name]
            if (wanted is not None and name not in wanted) or r >= target_rank:
                continue
            if name in layer.merged_adapters:
                raise ValueError(f"adapter {name!r} is fused; unfuse_lora() before padding its rank")
            layer.lora_A[name] = _padded(layer.lora_A[name], target_rank, 0)
            layer.lora_B[name] = _padded(layer.lora_B[name], target_rank, 1)
            # keep alpha / rank: the scaling (and set_scale's result) stay what they were
            layer.lora_alpha[name] = layer.lora_alpha[name] * (
                (target_rank / r) ** 0.5 if layer.use_rslora.get(name, False) else target_rank / r)
            layer.r[name] = target_rank
