"""Where LoRA weights come from: a state dict, a file, a folder, or a Hub repository (through :mod:`kernel.hub`).

A folder or repository without ``weight_name`` gets Diffusers' choice: ``pytorch_lora_weights.safetensors``
when present, else the one ``.safetensors`` file (legacy ``.bin`` only through
``torch.load(weights_only=True)``).  ``HF_HUB_OFFLINE=1`` / ``local_files_only=True`` use the Hub cache only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from kernel import hub

logger = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.bin"
LORA_WEIGHT_NAME_SAFE = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"
_NOT_LORA = ("scheduler", "optimizer", "checkpoint")


def _choose(files: list[str], where: str, use_safetensors: bool | None) -> str:
    """Diffusers' rule for a folder without ``weight_name``."""
    files = [f for f in files if not any(s in f for s in _NOT_LORA)]
    safe = [f for f in files if f.endswith(".safetensors")]
    legacy = [f for f in files if f.endswith(".bin")]
    for group, name in ((safe, LORA_WEIGHT_NAME_SAFE), (legacy if use_safetensors is not True else [], LORA_WEIGHT_NAME)):
        preferred = [f for f in group if f.endswith(name)]
        if preferred:
            return sorted(preferred, key=len)[0]
        if group:
            if len(group) > 1:
                logger.warning("%s holds several weight files %s; loading %s (pass weight_name to choose)",
                               where, sorted(group), sorted(group)[0])
            return sorted(group)[0]
    raise FileNotFoundError(f"no LoRA weights (.safetensors{'' if use_safetensors else ' or .bin'}) in {where}; "
                            "pass weight_name=... naming the file")


def _offline(hub_kwargs: dict) -> bool:
    from huggingface_hub import constants

    return bool(hub_kwargs.get("local_files_only")) or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def resolve(source: str | os.PathLike, weight_name: str | None, subfolder: str | None, use_safetensors: bool | None,
            hub_kwargs: dict) -> Path:
    """The local path of the LoRA file ``source`` names."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if hub.is_local(source):
        folder = path / subfolder if subfolder else path
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder}")
        name = weight_name or _choose([p.name for p in folder.iterdir() if p.is_file()], str(folder), use_safetensors)
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(f"no {name} in {folder}")
        return file
    if weight_name is not None:
        return hub.resolve_file(source, weight_name, subfolder=subfolder, **hub_kwargs)
    if _offline(hub_kwargs):
        folder = hub.resolve_folder(source, subfolder=subfolder, allow_patterns=["*.safetensors", "*.bin"],
                                    **{**hub_kwargs, "local_files_only": True})
        return folder / _choose([p.name for p in folder.iterdir() if p.is_file()], f"the cached {source}", use_safetensors)
    from huggingface_hub import HfApi

    kwargs = {k: hub_kwargs[k] for k in ("revision", "token") if hub_kwargs.get(k) is not None}
    try:
        files = HfApi().list_repo_files(str(source), **kwargs)
    except Exception as err:  # huggingface_hub raises several kinds
        raise FileNotFoundError(f"could not list the files of {source!r} on the Hub ({type(err).__name__}: {err}); "
                                "pass weight_name=... or a local path") from err
    prefix = f"{subfolder}/" if subfolder else ""
    name = _choose([f[len(prefix):] for f in files if f.startswith(prefix) and "/" not in f[len(prefix):]], str(source),
                   use_safetensors)
    return hub.resolve_file(source, name, subfolder=subfolder, **hub_kwargs)


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(tensors, Diffusers' LoRA metadata or None)`` of a ``.safetensors`` or legacy ``.bin`` file."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, RuntimeError) as err:
            raise ValueError(f"could not read {path}: it is corrupt or truncated ({err})") from None
        raw = header.get(METADATA_KEY)
        try:
            metadata = json.loads(raw) if raw else None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: its {METADATA_KEY} metadata is not valid JSON ({err})") from None
        return tensors, metadata
    try:
        tensors = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several kinds
        raise ValueError(f"could not read {path} with weights_only=True ({err})") from None
    if not isinstance(tensors, dict):
        raise ValueError(f"{path} holds a {type(tensors).__name__}, not a state dict")
    return tensors, None


def fetch(source: Any, weight_name: str | None = None, **kwargs: Any) -> tuple[dict[str, Any], dict | None, str]:
    """``(state dict, metadata, description)`` for ``source``: a dict, a file, a folder or a Hub repo id."""
    subfolder = kwargs.pop("subfolder", None)
    use_safetensors = kwargs.pop("use_safetensors", None)
    hub_kwargs = hub.split_hub_kwargs(kwargs)
    if isinstance(source, dict):
        return dict(source), None, "the state dict"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError("pretrained_model_name_or_path_or_dict must be a folder or file path, a Hub repo id or a "
                        f"state dict, got {type(source).__name__}")
    path = resolve(source, weight_name, subfolder, use_safetensors, hub_kwargs)
    tensors, metadata = read_file(path)
    return tensors, metadata, str(path)
