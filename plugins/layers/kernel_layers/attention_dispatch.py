"""Attention kernels behind one call, :func:`dispatch_attention`, and the process-wide backend choice.

Backends (scaled dot-product attention of Vaswani et al., arXiv:1706.03762):

``"sdpa"`` (default)
    ``torch.nn.functional.scaled_dot_product_attention``, which picks the flash /
    memory-efficient / math kernel itself.
``"sliced"``
    the same call on slices of ``slice_size`` rows of the flattened ``batch * heads`` axis, so
    only one slice of attention scores is alive at a time; numbers equal ``"sdpa"``.
``"math"``
    explicit ``softmax(q k^T * scale + mask) v``; honours ``upcast_attention`` /
    ``upcast_softmax`` (the reference used to check the others).
``"xformers"`` / ``"flash"``
    ``xformers.ops.memory_efficient_attention`` / ``flash_attn.flash_attn_func`` when those
    packages are installed (a clear ``ImportError`` otherwise).
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Iterator

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "sliced", "math", "xformers", "flash")
_ALIASES = {"native": "sdpa", "torch": "sdpa", "xformers": "xformers", "flash_attn": "flash", "_native_math": "math"}
_default_backend = "sdpa"


def _check_backend(name: str | None) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, one of {BACKENDS}; got {type(name).__name__}")
    name = _ALIASES.get(name, name)
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is not an attention backend; use one of {BACKENDS}")
    if name in ("xformers", "flash"):
        _optional_module(name)
    return name


def _optional_module(name: str):
    module = {"xformers": "xformers.ops", "flash": "flash_attn"}[name]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = {"xformers": "xformers", "flash": "flash-attn"}[name]
        raise ImportError(
            f"the {name!r} attention backend needs the {package!r} package (pip install {package}); "
            f"it could not be imported ({err}). Use backend='sdpa' or 'sliced' instead."
        ) from None


def set_attention_backend(name: str) -> None:
    """Set the process-wide default backend (one of :data:`BACKENDS`)."""
    global _default_backend
    _default_backend = _check_backend(name)


def get_attention_backend() -> str:
    """The process-wide default backend."""
    return _default_backend


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Temporarily change the process-wide default backend."""
    previous = get_attention_backend()
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


# ----------------------------------------------------------------------------- kernels
def _as_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Boolean "keep" masks become additive biases (0 keep, -inf drop); float masks take ``dtype``."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask.to(dtype)


def _math_attention(q, k, v, mask, scale, upcast_attention=False, upcast_softmax=False):
    dtype = q.dtype
    if upcast_attention:
        q, k = q.float(), k.float()
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + _as_bias(mask, scores.dtype)
    if upcast_softmax:
        scores = scores.float()
    probs = scores.softmax(dim=-1).to(dtype)
    return torch.matmul(probs, v)


def _sliced_attention(q, k, v, mask, scale, slice_size):
    """SDPA over slices of the flattened ``batch * heads`` axis (Diffusers' ``slice_size`` meaning)."""
    b, h, lq, _ = q.shape
    rows = b * h
    q3, k3, v3 = q.reshape(rows, lq, -1), k.reshape(rows, k.shape[2], -1), v.reshape(rows, v.shape[2], -1)
    if mask is not None:
        mask = mask.expand(b, h, mask.shape[-2], mask.shape[-1])  # a view: nothing is materialized
    out = q3.new_empty(rows, lq, v.shape[-1])
    for start in range(0, rows, slice_size):
        stop = min(start + slice_size, rows)
        piece_mask = None
        if mask is not None:
            idx = torch.arange(start, stop, device=q.device)
            piece_mask = mask[idx // h, idx % h]
        out[start:stop] = F.scaled_dot_product_attention(
            q3[start:stop], k3[start:stop], v3[start:stop], attn_mask=piece_mask, scale=scale
        )
    return out.view(b, h, lq, -1)


def dispatch_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    backend: str | None = None,
    slice_size: int | None = None,
    is_causal: bool = False,
    upcast_attention: bool = False,
    upcast_softmax: bool = False,
) -> torch.Tensor:
    """Attention of ``(B, H, Lq, D)`` queries over ``(B, H, Lk, D)`` keys/values -> ``(B, H, Lq, Dv)``.

    ``attn_mask`` broadcasts to ``(B, H, Lq, Lk)``: boolean (``True`` = attend) or an additive bias.
    ``scale`` defaults to ``1 / sqrt(D)``.  ``backend=None`` uses the process-wide default.
    """
    backend = backend or _default_backend
    if attn_mask is not None and attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
        attn_mask = attn_mask.to(query.dtype)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    if is_causal:
        lq, lk = query.shape[-2], key.shape[-2]
        causal = torch.ones(lq, lk, dtype=torch.bool, device=query.device).tril()  # top-left aligned, as SDPA
        attn_mask = causal if attn_mask is None else _as_bias(attn_mask, query.dtype) + _as_bias(causal, query.dtype)
    if scale is None:
        scale = query.shape[-1] ** -0.5
    if backend == "sliced":
        size = slice_size or max(1, query.shape[1] // 2)
        return _sliced_attention(query, key, value, attn_mask, scale, size)
    if backend == "math":
        return _math_attention(query, key, value, attn_mask, scale, upcast_attention, upcast_softmax)
    if backend == "xformers":
        xops = _optional_module("xformers")
        bias = None
        if attn_mask is not None:
            shape = (query.shape[0], query.shape[1], query.shape[2], key.shape[2])
            bias = _as_bias(attn_mask, query.dtype).expand(shape).contiguous()
        out = xops.memory_efficient_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_bias=bias, scale=scale
        )
        return out.transpose(1, 2)
    if backend == "flash":
        if attn_mask is not None:
            raise ValueError("the 'flash' attention backend does not take an attention mask; use 'sdpa' or 'xformers'")
        flash = _optional_module("flash")
        out = flash.flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), softmax_scale=scale)
        return out.transpose(1, 2)
    raise ValueError(f"backend={backend!r} is not an attention backend; use one of {BACKENDS}")
