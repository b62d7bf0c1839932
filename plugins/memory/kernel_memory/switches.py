"""Diffusers' pipeline memory switches, moved here from the kernel's pipeline base (which reaches them
as methods, ``pipe.enable_vae_tiling()`` ..., and keeps ``remove_all_hooks`` and
``maybe_free_model_hooks`` to undo CPU offload), and ``model.dequantize()``.

* attention slicing: every model component with ``set_attention_slice`` computes attention in
  slices of heads; VAE slicing decodes a batch one image at a time, VAE tiling in overlapping tiles;

* model offload: every model component stays on the CPU and moves whole to the accelerator when it
  runs, the previous one going back (order: the pipeline's ``model_cpu_offload_seq``);
* sequential offload: every weight stays on the CPU and each layer's weights move only while that
  layer runs (the least memory, the most transfers).
"""

from __future__ import annotations

from typing import Any

import torch


def enable_attention_slicing(pipe: Any, slice_size: int | str | None = "auto") -> None:
    for module in pipe._modules().values():
        if callable(getattr(module, "set_attention_slice", None)):
            module.set_attention_slice(slice_size)


def disable_attention_slicing(pipe: Any) -> None:
    enable_attention_slicing(pipe, None)


def _vae(pipe: Any) -> Any:
    vae = getattr(pipe, "vae", None)
    if vae is None:
        raise ValueError(f"{type(pipe).__name__} has no vae to slice or tile")
    return vae


def enable_vae_slicing(pipe: Any) -> None:
    _vae(pipe).enable_slicing()


def disable_vae_slicing(pipe: Any) -> None:
    _vae(pipe).disable_slicing()


def enable_vae_tiling(pipe: Any) -> None:
    _vae(pipe).enable_tiling()


def disable_vae_tiling(pipe: Any) -> None:
    _vae(pipe).disable_tiling()


def dequantize(model: torch.nn.Module) -> torch.nn.Module:
    """``model.dequantize()``: undo a quantization_config load (full-precision layers, with the rounding
    error), and drop ``quantization_config`` from the model's config."""
    from kernel.config import FrozenConfig

    quantizer = model.__dict__.pop("hf_quantizer", None)
    if quantizer is None:
        raise ValueError(f"dequantize(): this {type(model).__name__} is not quantized (it was not loaded with a "
                         "quantization_config)")
    quantizer.dequantize(model)
    if "quantization_config" in getattr(model, "config", {}):
        config = FrozenConfig({k: v for k, v in model.config.items() if k != "quantization_config"})
        object.__setattr__(config, "defaults_used", getattr(model.config, "defaults_used", ()))
        object.__setattr__(model, "_internal_dict", config)
    return model


def offload_target(gpu_id: int | None, device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type != "cpu" and device.index is None:
        device = torch.device(device.type, gpu_id or 0)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CPU offload needs an accelerator: torch.cuda.is_available() is False "
                         "(pass device='cpu' only to test the hooks)")
    return device


def _start(pipe: Any, gpu_id: int | None, device: Any) -> torch.device:
    if isinstance(pipe, torch.nn.Module):
        raise TypeError("CPU offload is a pipeline switch; for one model use enable_group_offload")
    target = offload_target(gpu_id, device)
    pipe.disable_cuda_graphs()
    pipe.remove_all_hooks()
    pipe.to("cpu")
    pipe._offload_device = target
    return target


def enable_model_cpu_offload(pipe: Any, gpu_id: int | None = None, device: torch.device | str = "cuda") -> None:
    """Keep each model on the CPU until it runs, one at a time, through accelerate hooks."""
    from accelerate import cpu_offload_with_hook

    target = _start(pipe, gpu_id, device)
    order = [n for n in (pipe.model_cpu_offload_seq or "").split("->") if n]
    modules = pipe._modules()
    hook = None
    pipe._offload_hooks = []
    for name in order + [n for n in modules if n not in order]:
        module = modules.get(name)
        if module is None or name in pipe._exclude_from_cpu_offload:
            continue
        _, hook = cpu_offload_with_hook(module, target, prev_module_hook=hook)
        pipe._offload_hooks.append(hook)
    pipe._offload_kind = "model"


def enable_sequential_cpu_offload(pipe: Any, gpu_id: int | None = None, device: torch.device | str = "cuda") -> None:
    """Keep weights on the CPU and move each submodule's weights only while it runs (least memory)."""
    from accelerate import cpu_offload

    target = _start(pipe, gpu_id, device)
    for name, module in pipe._modules().items():
        if name in pipe._exclude_from_cpu_offload:
            module.to(target)
            continue
        cpu_offload(module, execution_device=target, offload_buffers=len(module._parameters) > 0)
    pipe._offload_kind = "sequential"
