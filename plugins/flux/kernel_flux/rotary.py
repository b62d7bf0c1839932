"""Rotary position embeddings of Flux (RoPE, Su et al., "RoFormer", arXiv:2104.09864).

Each pair of channels ``(2k, 2k+1)`` of a query/key is rotated by the angle ``pos * w_k``,
``w_k = theta ** (-2k / dim)``.  Multi-axis RoPE (Flux) gives every token an id per axis
(text index, row, column), splits the head's channels into one block per axis, and
concatenates the per-axis tables.  Tables are computed in float64 (float32 where the device
lacks it) and returned as float32 ``cos``/``sin`` of shape ``(S, dim)`` with each frequency
repeated for both channels of its pair.
"""

from __future__ import annotations

import torch
from torch import nn


def _freq_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type in ("mps", "npu") else torch.float64


def rope_cos_sin(dim: int, positions: torch.Tensor, theta: float = 10000.0,
                 freqs_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S,)`` positions -> ``(cos, sin)`` float32 tables of shape ``(S, dim)``, pair-interleaved."""
    if dim % 2:
        raise ValueError(f"a rotary axis needs an even number of channels, got {dim}")
    dtype = freqs_dtype or _freq_dtype(positions.device)
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=dtype, device=positions.device) / dim)
    angles = torch.outer(positions.to(dtype), inv_freq)
    cos = angles.cos().repeat_interleave(2, dim=1).float()
    sin = angles.sin().repeat_interleave(2, dim=1).float()
    return cos, sin


def apply_rotary_emb(x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor], sequence_dim: int = 2) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` (``(B, H, S, D)``, or ``(B, S, H, D)`` with ``sequence_dim=1``).

    Computed in float32 and returned in ``x``'s dtype.
    """
    cos, sin = freqs
    if sequence_dim == 2:
        cos, sin = cos[None, None], sin[None, None]
    elif sequence_dim == 1:
        cos, sin = cos[None, :, None], sin[None, :, None]
    else:
        raise ValueError(f"sequence_dim={sequence_dim!r}; use 1 or 2")
    cos, sin = cos.to(x.device), sin.to(x.device)
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    even, odd = pairs.unbind(-1)
    # (a, b) -> (-b, a): the pair multiplied by i.
    turned = torch.stack([-odd, even], dim=-1).flatten(-2)
    return (x.float() * cos + turned.float() * sin).to(x.dtype)


class FluxPosEmbed(nn.Module):
    """Multi-axis RoPE tables from ``(S, n_axes)`` ids; axis ``i`` gets ``axes_dim[i]`` channels."""

    def __init__(self, theta: int, axes_dim: list[int] | tuple[int, ...]):
        super().__init__()
        self.theta = theta
        self.axes_dim = list(axes_dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.ndim != 2 or ids.shape[-1] != len(self.axes_dim):
            raise ValueError(f"ids must have shape (tokens, {len(self.axes_dim)}), got {tuple(ids.shape)}")
        pos = ids.float()
        tables = [rope_cos_sin(d, pos[:, i], theta=self.theta) for i, d in enumerate(self.axes_dim)]
        return torch.cat([c for c, _ in tables], dim=-1), torch.cat([s for _, s in tables], dim=-1)
