"""GGUF block formats, dequantised with torch (on whatever device the raw blocks are).

Each quantized row of a GGUF tensor is a run of fixed-size blocks; one block encodes
``block_size`` consecutive weights. The layouts (ggml's ``block_q8_0`` ... ``block_q5_K``):

* ``Q8_0`` (32 weights, 34 bytes): fp16 scale ``d``, 32 int8 ``q``; ``w = d q``.
* ``Q4_0`` (32, 18): ``d``, 16 bytes of nibbles (low nibbles are weights 0-15, high 16-31); ``w = d (q - 8)``.
* ``Q4_1`` (32, 20): ``d``, fp16 minimum ``m``, nibbles; ``w = d q + m``.
* ``Q5_0`` (32, 22): ``d``, 32 high bits (a little-endian uint32), nibbles; ``w = d (q - 16)``.
* ``Q5_1`` (32, 24): ``d``, ``m``, high bits, nibbles; ``w = d q + m``.
* ``Q4_K`` (256, 144): super-block ``d`` and ``dmin`` (fp16), 12 bytes packing eight 6-bit scales and
  eight 6-bit minimums (one per sub-block of 32), 128 bytes of nibbles (32 bytes per pair of
  sub-blocks: low nibbles the first, high the second); ``w = d sc q - dmin m``.
* ``Q5_K`` (256, 176): as ``Q4_K`` plus 32 bytes of high bits (bit ``k`` of byte ``l`` is the fifth
  bit of weight ``l`` of sub-block ``k``).

Unquantized ``F32``, ``F16`` and ``BF16`` tensors are read as they are.
"""

from __future__ import annotations

import torch


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    return blocks[:, start:start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """16 bytes -> 32 values: the low nibbles, then the high ones."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1).float()


def _high_bits(qh: torch.Tensor) -> torch.Tensor:
    """4 bytes (a little-endian uint32) -> 32 fifth bits, times 16."""
    bits = qh.long()
    word = bits[:, 0] | (bits[:, 1] << 8) | (bits[:, 2] << 16) | (bits[:, 3] << 24)
    return (((word[:, None] >> torch.arange(32, device=qh.device)) & 1) * 16).float()


def q8_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * b[:, 2:].contiguous().view(torch.int8).float()


def q4_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * (_nibbles(b[:, 2:]) - 8)


def q4_1(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * _nibbles(b[:, 4:]) + _f16(b, 2)


def q5_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * (_nibbles(b[:, 6:]) + _high_bits(b[:, 2:6]) - 16)


def q5_1(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * (_nibbles(b[:, 8:]) + _high_bits(b[:, 4:8])) + _f16(b, 2)


def _k_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 bytes -> eight 6-bit scales and eight 6-bit minimums."""
    s = s.long()
    scales = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)], dim=1)
    mins = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], dim=1)
    return scales.float(), mins.float()


def _k_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """128 bytes -> (8 sub-blocks, 32): per 32-byte group, low nibbles then high nibbles."""
    qs = qs.reshape(-1, 4, 1, 32)
    return torch.cat([qs & 0x0F, qs >> 4], dim=2).reshape(-1, 8, 32).float()


def _k_combine(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    scales, mins = _k_scales(b[:, 4:16])
    w = _f16(b, 0)[:, :, None] * scales[:, :, None] * q - _f16(b, 2)[:, :, None] * mins[:, :, None]
    return w.reshape(-1, 256)


def q4_k(b: torch.Tensor) -> torch.Tensor:
    return _k_combine(b, _k_nibbles(b[:, 16:144]))


def q5_k(b: torch.Tensor) -> torch.Tensor:
    qh = b[:, 16:48].long()
    high = ((qh[:, None, :] >> torch.arange(8, device=b.device)[None, :, None]) & 1) * 16
    return _k_combine(b, _k_nibbles(b[:, 48:176]) + high.float())


#: quant type name -> (weights per block, bytes per block, dequantisation of (n, bytes) blocks -> (n, weights)).
QUANTIZED = {
    "Q8_0": (32, 34, q8_0), "Q4_0": (32, 18, q4_0), "Q4_1": (32, 20, q4_1), "Q5_0": (32, 22, q5_0),
    "Q5_1": (32, 24, q5_1), "Q4_K": (256, 144, q4_k), "Q5_K": (256, 176, q5_k),
}
UNQUANTIZED = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
SUPPORTED = tuple(QUANTIZED) + tuple(UNQUANTIZED)


def dequantize(raw: torch.Tensor, quant_type: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``shape`` weights that the raw GGUF rows ``raw`` (uint8, ``(rows, bytes per row)``) encode."""
    block, size, fn = QUANTIZED[quant_type]
    return fn(raw.reshape(-1, size)).reshape(shape).to(dtype)


def quantize_q8_0(weight: torch.Tensor) -> torch.Tensor:
    """``(rows, cols)`` weights (``cols`` a multiple of 32) -> Q8_0 rows: per 32 weights an fp16 scale
    ``d = max|w| / 127`` and ``round(w / d)`` as int8 (ggml's reference quantizer)."""
    rows, cols = weight.shape
    w = weight.detach().float().reshape(-1, 32)
    d = w.abs().amax(dim=1, keepdim=True) / 127
    q = torch.where(d > 0, w / d.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(w)).round().to(torch.int8)
    blocks = torch.cat([d.to(torch.float16).view(torch.uint8), q.view(torch.uint8)], dim=1)
    return blocks.reshape(rows, cols // 32 * 34)
