"""``pipe.enable_auto_memory(budget="8GB")`` and ``pipe.memory_plan()``: measure, plan, apply.

Each model component is measured (its weight bytes, the bytes of its largest block group plus the
layers around its blocks, what fp8 storage of its castable layers would save) and its working
memory estimated from the generation size; :func:`kernel_memory.planner.plan` picks the
placement; this module applies it with the existing switches (``.to(device)``, accelerate's model
offload hooks, :func:`apply_group_offloading`, :func:`enable_layerwise_casting`). A forward pre-hook
on the denoiser re-plans when a call brings larger latents (resolution or batch) than the plan was
made for. The default budget is the device's free memory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernel_memory.casting import CASTABLE, DEFAULT_SKIP_MODULES_PATTERN
from kernel_memory.planner import ComponentSize, Plan, parse_bytes, plan

_STATE = "_kernel_auto_memory"


def _bytes(tensors) -> int:
    return sum(t.nelement() * t.element_size() for t in tensors)


def measure(name: str, module: nn.Module, activation: int, calls: int = 1) -> ComponentSize:
    """A component's sizes: whole, streamed one block at a time, and the fp8 saving of its castable layers."""
    import re

    weights = _bytes(list(module.parameters()) + list(module.buffers()))
    blocks = [b for child in module.children() if isinstance(child, (nn.ModuleList, nn.Sequential)) for b in child]
    stream_peak = None
    if blocks:
        block_bytes = [_bytes(list(b.parameters()) + list(b.buffers())) for b in blocks]
        stream_peak = weights - sum(block_bytes) + max(block_bytes)
    saving = 0
    patterns = DEFAULT_SKIP_MODULES_PATTERN + tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    if getattr(module, "hf_quantizer", None) is None and hasattr(module, "enable_layerwise_casting"):
        for layer_name, layer in module.named_modules():
            if isinstance(layer, CASTABLE) and not any(re.search(p, layer_name) for p in patterns):
                saving += sum(p.nelement() * (p.element_size() - 1) for p in layer.parameters(recurse=False)
                              if p.is_floating_point() and p.element_size() > 1)
    return ComponentSize(name, weights, activation, stream_peak, saving, calls)


def estimate_activation(pipe: Any, name: str, module: nn.Module, height: int, width: int, batch: int) -> int:
    """A rough upper estimate of a component's working memory for one call (bytes)."""
    dtype_bytes = next((p.element_size() for p in module.parameters() if p.is_floating_point()), 4)
    factor = getattr(getattr(pipe, "vae", None), "spatial_compression_ratio", None) or 8
    latent = batch * max(1, height // factor) * max(1, width // factor)
    widths = [m.out_features for m in module.modules() if isinstance(m, nn.Linear)]
    channels = [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)]
    if name in ("vae",):  # decoding at full resolution, with the widest convolution
        return 4 * batch * height * width * max(channels or [128]) * dtype_bytes
    if name.startswith("text_encoder"):
        return 8 * batch * 512 * max(widths or [768]) * dtype_bytes
    # denoiser: a few hidden states of the widest layer per latent token (x2 for classifier-free guidance)
    return 2 * 8 * latent * max(widths + channels or [320]) * dtype_bytes


def _apply(pipe: Any, chosen: Plan, device: torch.device, steps: int) -> None:
    from accelerate import cpu_offload_with_hook

    from kernel_memory.casting import enable_layerwise_casting
    from kernel_memory.offload import apply_group_offloading, remove_group_offloading

    modules = pipe._modules()
    pipe.remove_all_hooks()
    hook = None
    pipe._offload_hooks = []
    order = [n for n in (pipe.model_cpu_offload_seq or "").split("->") if n in modules]
    for name in order + [n for n in modules if n not in order]:
        module = modules[name]
        remove_group_offloading(module)
        if name in chosen.fp8 and "_kernel_layerwise_cast" not in module.__dict__:
            dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
            enable_layerwise_casting(module, storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
            module.__dict__["_kernel_layerwise_cast"] = True
        mode = chosen.modes[name]
        if mode == "resident":
            module.to(device)
        elif mode == "offload":
            module.to("cpu")
            _, hook = cpu_offload_with_hook(module, device, prev_module_hook=hook)
            pipe._offload_hooks.append(hook)
        else:
            apply_group_offloading(module, onload_device=device, offload_device="cpu", offload_type="block_level",
                                   num_blocks_per_group=1)
    pipe._offload_device = device
    pipe._offload_kind = "auto"


def _components(pipe: Any, height: int, width: int, batch: int, steps: int) -> list[ComponentSize]:
    denoiser = pipe._denoiser()
    out = []
    for name, module in pipe._modules().items():
        calls = steps if denoiser is not None and name == denoiser[0] else 1
        out.append(measure(name, module, estimate_activation(pipe, name, module, height, width, batch), calls))
    return out


def enable_auto_memory(pipe: Any, budget: int | str | None = None, device: Any = "cuda", height: int | None = None,
                       width: int | None = None, batch_size: int = 1, num_inference_steps: int = 30) -> Plan:
    """Plan and apply the memory switches that fit ``budget`` (default: the device's free memory) for
    generations of ``height`` x ``width`` (default: the pipeline's default size) and ``batch_size``."""
    if isinstance(pipe, nn.Module):
        raise TypeError("enable_auto_memory plans a pipeline's components; on one model use enable_group_offload")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if budget is None:
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(f"give budget= for {device} (the default is a CUDA device's free memory)")
        budget = torch.cuda.mem_get_info(device)[0]
    budget = parse_bytes(budget)
    if height is None or width is None:
        size = getattr(pipe, "default_sample_size", None) or 64
        factor = getattr(getattr(pipe, "vae", None), "spatial_compression_ratio", None) or 8
        height, width = height or size * factor, width or size * factor
    chosen = plan(_components(pipe, height, width, batch_size, num_inference_steps), budget)
    _apply(pipe, chosen, device, num_inference_steps)
    state = {"budget": budget, "device": device, "size": (height, width, batch_size), "steps": num_inference_steps,
             "plan": chosen}
    pipe.__dict__[_STATE] = state
    found = pipe._denoiser()
    if found is not None:
        handle = state.get("handle")
        if handle is not None:
            handle.remove()
        state["handle"] = found[1].register_forward_pre_hook(_replan_hook(pipe), with_kwargs=True)
    return chosen


def _replan_hook(pipe: Any):
    def hook(module, args, kwargs):
        state = pipe.__dict__.get(_STATE)
        sample = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        if state is None or sample is None or sample.dim() < 3:
            return None
        height, width, batch = state["size"]
        factor = getattr(getattr(pipe, "vae", None), "spatial_compression_ratio", None) or 8
        planned = batch * max(1, height // factor) * max(1, width // factor)
        tokens = sample.shape[0] * (sample.shape[-2] * sample.shape[-1] if sample.dim() == 4 else sample.shape[1])
        if tokens > 2 * planned:  # larger latents than planned for (x2: classifier-free guidance doubles the batch)
            scale = tokens / (2 * planned)
            state["size"] = (height, int(width * scale) + 1, batch)
            chosen = plan(_components(pipe, *state["size"], state["steps"]), state["budget"])
            if chosen.modes != state["plan"].modes or chosen.fp8 != state["plan"].fp8:
                _apply(pipe, chosen, state["device"], state["steps"])
                streamed = module.__dict__.get("_kernel_group_offload")
                if streamed is not None and streamed.top is not None:  # its hooks start with the next call
                    streamed.top.onload_now()
            state["plan"] = chosen
        return None

    return hook


def memory_plan(pipe: Any) -> str:
    """The plan ``enable_auto_memory`` applied (a printable table)."""
    state = pipe.__dict__.get(_STATE)
    if state is None:
        raise ValueError("no memory plan: call pipe.enable_auto_memory(budget=...) first")
    return state["plan"].describe()
