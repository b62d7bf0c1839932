"""Textual-inversion files: where they come from and what is in them.

Layouts, recognised from the keys:

==========================  ==========================================================  ===============
layout                      content                                                     token name
==========================  ==========================================================  ===============
Diffusers                   ``{token: tensor}`` (``learned_embeds.safetensors`` / .bin)  the key
A1111 ``.pt``               ``string_to_param: {"*": tensor}``, ``name``, ``step``...    ``name``
A1111 ``.safetensors``      ``{"emb_params": tensor}``                                   the file name
SDXL (A1111 and others)     ``{"clip_l": tensor, "clip_g": tensor}``                     the file name
a bare tensor               ``[n, width]`` or ``[width]``                                (``token=``)
==========================  ==========================================================  ===============

A ``token=`` argument always wins over the stored name.  Diffusers names an A1111
``.safetensors`` embedding ``emb_params``; here it is named after its file, as A1111 does.
Legacy files (``.pt``, ``.bin``) are read only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kernel import hub

logger = logging.getLogger(__name__)

TEXT_INVERSION_NAME = "learned_embeds.bin"
TEXT_INVERSION_NAME_SAFE = "learned_embeds.safetensors"
SDXL_KEYS = {"clip_l": 0, "clip_g": 1}  # SDXL file key -> which of the pipeline's two text encoders
_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


@dataclass
class Embedding:
    """One embedding read from a source: ``vectors`` is ``[n, width]``."""

    vectors: torch.Tensor
    token: str | None  # the name the source stores, if any
    source: str  # for messages: the file, or "state dict #i"
    encoder: int | None = None  # 0 / 1 for an SDXL file's clip_l / clip_g part, else None


# ---------------------------------------------------------------------------- files
def locate(source: str | os.PathLike, weight_name: str | None, subfolder: str | None, use_safetensors: bool | None,
           hub_kwargs: dict) -> Path:
    """The file ``source`` names: itself, or ``weight_name`` (default: ``learned_embeds.safetensors``, then
    ``learned_embeds.bin`` unless ``use_safetensors=True``) in a folder or a Hub repository."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.suffix in _FILE_SUFFIXES and not path.exists():
        raise FileNotFoundError(f"no textual-inversion file {str(source)!r}")
    if weight_name is not None:
        names = [weight_name]
    else:
        names = ([TEXT_INVERSION_NAME_SAFE] if use_safetensors is not False else []) + \
                ([TEXT_INVERSION_NAME] if use_safetensors is not True else [])
    errors = []
    for name in names:
        try:
            return hub.resolve_file(source, name, subfolder=subfolder, **hub_kwargs)
        except FileNotFoundError as err:
            errors.append(str(err))
    where = f"{source!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    raise FileNotFoundError(f"no textual-inversion file {' or '.join(names)} in {where}; pass weight_name=... naming "
                            f"the file ({'; '.join(errors)})")


def read_file(path: Path) -> Any:
    """The tensors (or A1111 dict) stored in ``path``."""
    if path.suffix == ".safetensors":
        from kernel.modeling import read_state_dict

        return read_state_dict([path])
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several kinds
        raise ValueError(f"could not read {path} with torch.load(weights_only=True): it is corrupt, or holds more "
                         f"than tensors and plain data ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------------------- layouts
def _vectors(value: Any, source: str, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise ValueError(f"{source}: {what} is not a floating-point tensor ({type(value).__name__}); "
                         "is this a textual-inversion embedding?")
    vectors = value.detach()
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"{source}: {what} has shape {tuple(value.shape)}; an embedding is [width] or "
                         "[vectors, width] with at least one vector")
    return vectors


def _layout_error(source: str, keys: list) -> ValueError:
    shown = ", ".join(repr(k) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
    return ValueError(
        f"{source}: unknown textual-inversion layout (keys {shown}); expected {{token: tensor}} (Diffusers), "
        "'string_to_param' (A1111 .pt), 'emb_params' (A1111 .safetensors), 'clip_l' and 'clip_g' (SDXL) or a tensor"
    )


def parse(obj: Any, source: str, stem: str | None) -> list[Embedding]:
    """The embeddings in a loaded file or given object; ``stem`` is the file name without suffix (or ``None``)."""
    if isinstance(obj, torch.Tensor):
        return [Embedding(_vectors(obj, source, "the tensor"), None, source)]
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: holds a {type(obj).__name__}; expected a dict of tensors or a tensor")
    keys = list(obj)
    if "string_to_param" in obj:  # A1111 .pt
        params = obj["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise ValueError(f"{source}: A1111 'string_to_param' should hold one tensor, got "
                             f"{list(params) if isinstance(params, dict) else type(params).__name__}")
        name = obj.get("name")
        vectors = _vectors(next(iter(params.values())), source, "'string_to_param'")
        return [Embedding(vectors, name if isinstance(name, str) and name else stem, source)]
    if keys == ["emb_params"]:  # A1111 .safetensors
        return [Embedding(_vectors(obj["emb_params"], source, "'emb_params'"), stem, source)]
    if set(keys) == set(SDXL_KEYS):
        return [Embedding(_vectors(obj[k], source, repr(k)), stem, source, SDXL_KEYS[k]) for k in SDXL_KEYS]
    if len(keys) == 1 and isinstance(keys[0], str) and isinstance(obj[keys[0]], torch.Tensor):  # Diffusers
        return [Embedding(_vectors(obj[keys[0]], source, repr(keys[0])), keys[0], source)]
    raise _layout_error(source, keys)


def load(source: Any, index: int, count: int, weight_name: str | None, subfolder: str | None,
         use_safetensors: bool | None, hub_kwargs: dict) -> list[Embedding]:
    """The embeddings of one ``pretrained_model_name_or_path`` entry (a tensor, dict, file, folder or Hub id)."""
    if isinstance(source, (dict, torch.Tensor)):
        label = "the state dict" if count == 1 else f"state dict #{index}"
        return parse(source, label if isinstance(source, dict) else label.replace("state dict", "tensor"), None)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError("pretrained_model_name_or_path must be a file or folder path, a Hub repo id, a state dict, a "
                        f"tensor, or a list of them; got {type(source).__name__}")
    path = locate(source, weight_name, subfolder, use_safetensors, hub_kwargs)
    return parse(read_file(path), str(path), path.stem)
