"""Layerwise casting: weights stored in a small dtype (fp8), upcast per layer while it runs.

``model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)``
(Diffusers' name and arguments) casts the weights of every convolution, linear and embedding
layer to ``storage_dtype`` once; a forward pre-hook casts the layer's own weights to
``compute_dtype`` just before it runs and a forward hook casts them back right after. Only one
layer is ever in the compute dtype, so weight memory is that of ``storage_dtype`` (half of bf16
for fp8) at the price of two casts per layer and the rounding of the weights to fp8.

Layers whose dotted name matches one of ``skip_modules_pattern`` (regular expressions,
``re.search``) keep their dtype. The default patterns are Diffusers': positional and patch
embeddings, norms, and a top-level ``proj_in`` / ``proj_out``, plus the model's
``_keep_in_fp32_modules`` and ``_skip_layerwise_casting_patterns``, and peft's LoRA layers (small,
and peft would cast its inputs to the storage dtype).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

DEFAULT_SKIP_MODULES_PATTERN = ("pos_embed", "patch_embed", "norm", "^proj_in$", "^proj_out$")
CASTABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
            nn.Embedding)
_HANDLES = "_kernel_layerwise_casting"


def _cast(module: nn.Module, dtype: torch.dtype, non_blocking: bool) -> None:
    for tensors in (module._parameters, module._buffers):
        for name, t in tensors.items():
            if t is not None and t.is_floating_point() and t.dtype != dtype:
                t.data = t.data.to(dtype, non_blocking=non_blocking)


def apply_layerwise_casting_hook(module: nn.Module, storage_dtype: torch.dtype, compute_dtype: torch.dtype,
                                 non_blocking: bool = False) -> None:
    """Store ``module``'s own weights in ``storage_dtype`` and run it in ``compute_dtype``."""
    for handle in module.__dict__.pop(_HANDLES, ()):
        handle.remove()
    _cast(module, storage_dtype, non_blocking)
    pre = module.register_forward_pre_hook(lambda m, args: _cast(m, compute_dtype, non_blocking))
    post = module.register_forward_hook(lambda m, args, out: _cast(m, storage_dtype, non_blocking))
    module.__dict__[_HANDLES] = (pre, post)


def apply_layerwise_casting(module: nn.Module, storage_dtype: torch.dtype, compute_dtype: torch.dtype,
                            skip_modules_pattern: Any = "auto", skip_modules_classes: tuple[type, ...] | None = None,
                            non_blocking: bool = False) -> list[str]:
    """Hook every castable layer of ``module`` not skipped by name or class; returns the layers' names."""
    if skip_modules_pattern == "auto":
        skip_modules_pattern = DEFAULT_SKIP_MODULES_PATTERN
    if isinstance(skip_modules_pattern, str):
        skip_modules_pattern = (skip_modules_pattern,)
    patterns = [re.compile(p) for p in (skip_modules_pattern or ())]
    if not patterns and not skip_modules_classes:
        apply_layerwise_casting_hook(module, storage_dtype, compute_dtype, non_blocking)
        return [""]
    done: list[str] = []

    def visit(m: nn.Module, prefix: str) -> None:
        if prefix and (any(p.search(prefix) for p in patterns) or
                       (skip_modules_classes and isinstance(m, tuple(skip_modules_classes)))):
            return
        if isinstance(m, CASTABLE):
            apply_layerwise_casting_hook(m, storage_dtype, compute_dtype, non_blocking)
            done.append(prefix)
            return
        for name, child in m.named_children():
            visit(child, f"{prefix}.{name}" if prefix else name)

    visit(module, "")
    return done


def _peft_layer_names() -> tuple[str, ...]:
    try:
        from peft.tuners.lora.layer import LoraLayer
    except ImportError:
        return ()
    return tuple(LoraLayer.adapter_layer_names)


def _model_casting(model: nn.Module, storage_dtype: torch.dtype, compute_dtype: torch.dtype | None,
                   skip_modules_pattern: Any, skip_modules_classes: Any, non_blocking: bool) -> list[str]:
    if not (isinstance(storage_dtype, torch.dtype) and storage_dtype.is_floating_point):
        raise TypeError(f"storage_dtype must be a floating torch.dtype such as torch.float8_e4m3fn, got {storage_dtype!r}")
    if compute_dtype is not None and not (isinstance(compute_dtype, torch.dtype) and compute_dtype.is_floating_point):
        raise TypeError(f"compute_dtype must be a floating torch.dtype such as torch.bfloat16, got {compute_dtype!r}")
    if getattr(model, "hf_quantizer", None) is not None:
        raise ValueError(f"{type(model).__name__} is quantized; layerwise casting applies to unquantized weights")
    patterns: tuple[str, ...]
    if skip_modules_pattern is None:
        patterns = DEFAULT_SKIP_MODULES_PATTERN + _peft_layer_names()
    else:
        patterns = (skip_modules_pattern,) if isinstance(skip_modules_pattern, str) else tuple(skip_modules_pattern)
    patterns += tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    patterns += tuple(getattr(model, "_skip_layerwise_casting_patterns", None) or ())
    if compute_dtype is None:
        compute_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return apply_layerwise_casting(model, storage_dtype, compute_dtype, tuple(dict.fromkeys(patterns)),
                                   skip_modules_classes, non_blocking)


def enable_layerwise_casting(target: Any, storage_dtype: torch.dtype = torch.float8_e4m3fn,
                             compute_dtype: torch.dtype | None = None, skip_modules_pattern: Any = None,
                             skip_modules_classes: tuple[type, ...] | None = None, non_blocking: bool = False,
                             components: list[str] | None = None) -> list[str]:
    """``model.enable_layerwise_casting(...)`` (Diffusers' arguments) and ``pipe.enable_layerwise_casting(...)``.

    On a pipeline it applies to the denoiser (``components=[...]`` names others); returns the names
    of the layers now stored in ``storage_dtype``.
    """
    if isinstance(target, nn.Module):
        if components is not None:
            raise TypeError("components= is for pipelines; a model casts its own layers")
        return _model_casting(target, storage_dtype, compute_dtype, skip_modules_pattern, skip_modules_classes,
                              non_blocking)
    modules = {k: v for k, v in target.components.items() if isinstance(v, nn.Module)}
    if components is None:
        found = target._denoiser()
        if found is None:
            raise ValueError(f"{type(target).__name__} has no denoiser; name the components to cast (components=[...])")
        components = [found[0]]
    unknown = [c for c in components if c not in modules]
    if unknown:
        raise ValueError(f"components={unknown} are not model components of this pipeline ({sorted(modules)})")
    done = []
    for name in components:
        layers = _model_casting(modules[name], storage_dtype, compute_dtype, skip_modules_pattern,
                                skip_modules_classes, non_blocking)
        done += [f"{name}.{layer}" if layer else name for layer in layers]
    return done
