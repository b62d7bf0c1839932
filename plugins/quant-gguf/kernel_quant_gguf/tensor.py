"""GGUF tensors as torch tensors, and ``.gguf`` files as lazy ``key -> tensor`` mappings.

A quantized GGUF tensor is kept as it is stored: ``uint8`` rows of blocks, ``(..., rows, bytes per row)``.
:class:`GGUFTensor` is that raw tensor with its ``quant_type``; its ``logical_shape`` is the shape of
the weights it encodes. A block never spans two rows, so whole rows can be split off, joined and
moved without decoding: the single-file converters split BFL's fused ``qkv`` rows this way, and the
pieces keep their type. Anything else (a transpose, a cast, a column slice) would reinterpret the
bytes and is refused; ``dequantize()`` first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from kernel_quant_gguf.dequant import QUANTIZED, SUPPORTED, UNQUANTIZED, dequantize

#: Functions that keep whole rows: their tensor results are GGUF tensors of the same type.
_ROW_OPS = {torch.split, torch.Tensor.split, torch.chunk, torch.Tensor.chunk, torch.cat, torch.concat,
            torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.detach, torch.Tensor.clone,
            torch.Tensor.contiguous, torch.Tensor.pin_memory, torch.Tensor.__getitem__, torch.Tensor.requires_grad_}


class GGUFTensor(torch.Tensor):
    """Raw GGUF blocks (``uint8``, ``(..., rows, bytes per row)``) that remember their ``quant_type``."""

    quant_type: str

    def __new__(cls, raw: torch.Tensor, quant_type: str) -> "GGUFTensor":
        if quant_type not in QUANTIZED:
            raise ValueError(f"quant_type={quant_type!r} is not a supported GGUF block type; supported: "
                             f"{', '.join(QUANTIZED)}")
        if raw.dtype != torch.uint8 or raw.dim() < 1 or raw.shape[-1] % QUANTIZED[quant_type][1]:
            raise ValueError(f"a {quant_type} tensor is uint8 rows of {QUANTIZED[quant_type][1]}-byte blocks, got "
                             f"{raw.dtype} of shape {tuple(raw.shape)}")
        tensor = raw.as_subclass(cls)
        tensor.quant_type = quant_type
        return tensor

    @property
    def logical_shape(self) -> tuple[int, ...]:
        """The shape of the weights the blocks encode (what the model's parameter has)."""
        block, size, _ = QUANTIZED[self.quant_type]
        return (*self.shape[:-1], self.shape[-1] // size * block)

    def raw(self) -> torch.Tensor:
        """The blocks as a plain ``uint8`` tensor (sharing memory)."""
        return self.as_subclass(torch.Tensor)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.raw(), self.quant_type, self.logical_shape, dtype)

    def __repr__(self, **_) -> str:
        return f"GGUFTensor({self.quant_type}, shape={self.logical_shape}, device={self.device})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        in_place = name.endswith("_") and not name.endswith("__") or name in ("__setitem__", "copy_")
        # checked before running (a refused in-place op must not touch the bytes), or once a result is a tensor
        checked = _check_row_op(func, args, kwargs) if func in _ROW_OPS or in_place else None
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
        tensors = result if isinstance(result, (list, tuple)) else [result]
        if not any(isinstance(t, torch.Tensor) for t in tensors) or func is torch.Tensor.as_subclass:
            return result  # shapes, dtypes, sizes, numpy views: nothing to wrap
        quant_type = checked or _check_row_op(func, args, kwargs)
        if any(isinstance(t, torch.Tensor) and t.dtype != torch.uint8 for t in tensors):
            raise TypeError(f"casting a GGUF-quantized tensor ({quant_type}) would mix up its blocks; use "
                            ".dequantize(dtype)")
        wrapped = [GGUFTensor(t.as_subclass(torch.Tensor), quant_type) if isinstance(t, torch.Tensor) else t
                   for t in tensors]
        return type(result)(wrapped) if isinstance(result, (list, tuple)) else wrapped[0]


_JOINS = (torch.cat, torch.concat)
_SPLITS = (torch.split, torch.Tensor.split, torch.chunk, torch.Tensor.chunk)


def _check_row_op(func, args, kwargs) -> str:
    """The quant type of a row operation's result; a ``TypeError`` for any other operation."""
    name = getattr(func, "__name__", str(func))
    inputs = list(args[0]) if func in _JOINS else [args[0]]
    if func not in _ROW_OPS or not all(isinstance(t, GGUFTensor) for t in inputs):
        raise TypeError(f"{name} on a GGUF-quantized tensor: only whole rows can be split, joined, indexed, moved or "
                        "copied (the bytes encode blocks along each row); call .dequantize() first")
    types = sorted({t.quant_type for t in inputs})
    if len(types) > 1:
        raise TypeError(f"{name}: GGUF tensors of different types ({', '.join(types)}) cannot be joined")
    ndim = inputs[0].dim()
    if func in _JOINS + _SPLITS:
        dim = kwargs.get("dim", args[1 if func in _JOINS else 2] if len(args) > (1 if func in _JOINS else 2) else 0)
        along_blocks = dim % ndim == ndim - 1
    else:
        along_blocks = func is torch.Tensor.__getitem__ and (not isinstance(args[1], (int, slice)) or ndim < 2)
    if along_blocks:
        raise TypeError(f"{name}: a GGUF tensor splits, joins and indexes along its rows only, not along the blocks "
                        "of a row")
    return types[0]


class GGUFFile(Mapping):
    """The tensors of a ``.gguf`` file by name, each read on access: quantized ones as :class:`GGUFTensor`,
    ``F32``/``F16``/``BF16`` ones as ordinary tensors. ``shapes`` and ``types`` (``key -> (type, shape)``)
    hold the logical shapes and read no data. A type outside ``SUPPORTED`` is an error listing them."""

    def __init__(self, path: str | os.PathLike) -> None:
        import gguf

        self.path = Path(path)
        try:
            reader = gguf.GGUFReader(str(path))
        except Exception as err:  # noqa: BLE001 - gguf raises several kinds on a bad file
            raise ValueError(f"could not read {path} as a GGUF file ({type(err).__name__}: {err})") from None
        unsupported = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type.name not in SUPPORTED})
        if unsupported:
            raise ValueError(f"{path}: GGUF quant type(s) {', '.join(unsupported)} are not supported; supported: "
                             f"{', '.join(SUPPORTED)}")
        self._tensors = {t.name: t for t in reader.tensors}
        self.types = {t.name: (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape))) for t in reader.tensors}
        self.shapes = {k: shape for k, (_, shape) in self.types.items()}

    def __getitem__(self, key: str) -> torch.Tensor:
        quant_type, shape = self.types[key]
        data = np.array(self._tensors[key].data)  # a copy out of the memory map: only this tensor is read
        if quant_type == "BF16":
            return torch.from_numpy(data.view(np.int16)).view(torch.bfloat16).reshape(shape)
        if quant_type in UNQUANTIZED:
            return torch.from_numpy(data).reshape(shape)
        block, size, _ = QUANTIZED[quant_type]
        return GGUFTensor(torch.from_numpy(data).reshape(*shape[:-1], shape[-1] // block * size), quant_type)

    def __contains__(self, key: object) -> bool:
        return key in self._tensors

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __str__(self) -> str:
        return str(self.path)
