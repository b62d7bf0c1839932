"""Writing LoRA files the way Diffusers does: one ``pytorch_lora_weights.safetensors`` per adapter, keys
prefixed by component (``unet.``, ``transformer.``, ``text_encoder.``), optional ``lora_adapter_metadata``.  Atomic:
the file appears complete or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from kernel.io import atomic_path
from kernel_lora.source import LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_SAFE, METADATA_KEY


def _tensors(layers: Any, argument: str) -> dict[str, torch.Tensor]:
    if isinstance(layers, torch.nn.Module):
        layers = layers.state_dict()
    if not isinstance(layers, Mapping):
        raise TypeError(f"{argument} must be a dict of tensors or an nn.Module, got {type(layers).__name__}")
    out = {}
    for key, value in layers.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{argument}[{key!r}] must be a tensor, got {type(value).__name__}")
        out[key] = value
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def write_lora(
    save_directory: str | os.PathLike,
    components: Mapping[str, Any],
    metadata: Mapping[str, Mapping[str, Any] | None] | None = None,
    is_main_process: bool = True,
    weight_name: str | None = None,
    save_function: Callable | None = None,
    safe_serialization: bool = True,
) -> Path | None:
    """Write ``{component: layers}`` (``layers`` a dict of tensors or a module) under ``save_directory``."""
    state: dict[str, torch.Tensor] = {}
    for component, layers in components.items():
        if layers:
            state.update({f"{component}.{k}": v for k, v in _tensors(layers, f"{component}_lora_layers").items()})
    if not state:
        raise ValueError("nothing to save: pass at least one of " + ", ".join(f"{c}_lora_layers" for c in components))
    packed_meta = {}
    for component, meta in (metadata or {}).items():
        if meta:
            if not isinstance(meta, Mapping):
                raise TypeError(f"{component}_lora_adapter_metadata must be a dict, got {type(meta).__name__}")
            packed_meta.update({f"{component}.{k}": _jsonable(v) for k, v in meta.items()})
    if packed_meta and not safe_serialization:
        raise ValueError("LoRA adapter metadata can only be saved with safe_serialization=True")
    directory = Path(save_directory)
    if directory.is_file():
        raise ValueError(f"save_directory must be a folder, {directory} is a file")
    if not is_main_process:
        return None
    name = weight_name or (LORA_WEIGHT_NAME_SAFE if safe_serialization else LORA_WEIGHT_NAME)
    target = directory / name
    # safetensors wants contiguous tensors that share no memory
    state = {k: v.detach().contiguous().clone() if not v.is_contiguous() else v.detach() for k, v in state.items()}
    with atomic_path(target) as tmp:
        if save_function is not None:
            save_function(state, str(tmp))
        elif safe_serialization:
            from safetensors.torch import save_file

            header = {"format": "pt"}
            if packed_meta:
                header[METADATA_KEY] = json.dumps(packed_meta, indent=2, sort_keys=True)
            save_file(state, str(tmp), metadata=header)
        else:
            torch.save(state, str(tmp))
    return target
