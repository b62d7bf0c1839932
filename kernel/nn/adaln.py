"""Adaptive layer norms of diffusion transformers beyond the DiT ones in :mod:`kernel.nn.normalization`.

* :class:`AdaLayerNormZeroSingle` -- adaLN-Zero with one (attention + MLP in parallel)
  branch: shift, scale, gate (Flux single-stream blocks).
* :class:`SD35AdaLayerNormZeroX` -- adaLN-Zero for SD3.5's blocks with a second self-attention
  on the image stream: the usual six terms plus shift, scale, gate for the extra attention.
* :class:`AdaLayerNormSingle` -- PixArt-alpha's adaLN-single (Chen et al., arXiv:2310.00426,
  sec. 2.3): one MLP of the timestep for the whole network, each block adding its own learned
  table to the result.

``AdaLayerNormZero`` and ``AdaLayerNormContinuous`` are re-exported from the shared module.
"""

from __future__ import annotations

import torch
from torch import nn

from kernel.nn.dit_embeddings import PixArtAlphaCombinedTimestepSizeEmbeddings
from kernel.nn.normalization import AdaLayerNormContinuous, AdaLayerNormZero

__all__ = ["AdaLayerNormContinuous", "AdaLayerNormSingle", "AdaLayerNormZero", "AdaLayerNormZeroSingle",
           "SD35AdaLayerNormZeroX", "modulate"]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with ``(B, D)`` terms broadcast over the tokens of ``(B, L, D)``."""
    return x * (1 + scale[:, None]) + shift[:, None]


def _plain_norm(dim: int, norm_type: str) -> nn.LayerNorm:
    if norm_type != "layer_norm":
        raise ValueError(f"norm_type={norm_type!r} is not supported; use 'layer_norm'")
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class AdaLayerNormZeroSingle(nn.Module):
    """Returns ``(norm(x) * (1 + scale) + shift, gate)`` from ``emb`` (3 terms)."""

    def __init__(self, embedding_dim: int, norm_type: str = "layer_norm", bias: bool = True):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 3 * embedding_dim, bias=bias)
        self.norm = _plain_norm(embedding_dim, norm_type)

    def forward(self, x: torch.Tensor, emb: torch.Tensor):
        shift, scale, gate = self.linear(self.silu(emb)).chunk(3, dim=1)
        return modulate(self.norm(x), shift, scale), gate


class SD35AdaLayerNormZeroX(nn.Module):
    """Nine terms: attention (shift, scale, gate), MLP (shift, scale, gate), second attention (shift, scale, gate).

    Returns ``(x_attn, gate_msa, shift_mlp, scale_mlp, gate_mlp, x_attn2, gate_msa2)``; both
    modulated inputs share one normalisation of ``hidden_states``.
    """

    def __init__(self, embedding_dim: int, norm_type: str = "layer_norm", bias: bool = True):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 9 * embedding_dim, bias=bias)
        self.norm = _plain_norm(embedding_dim, norm_type)

    def forward(self, hidden_states: torch.Tensor, emb: torch.Tensor):
        terms = self.linear(self.silu(emb)).chunk(9, dim=1)
        shift1, scale1, gate1, shift_mlp, scale_mlp, gate_mlp, shift2, scale2, gate2 = terms
        normed = self.norm(hidden_states)
        return (modulate(normed, shift1, scale1), gate1, shift_mlp, scale_mlp, gate_mlp,
                modulate(normed, shift2, scale2), gate2)


class AdaLayerNormSingle(nn.Module):
    """PixArt adaLN-single: ``(linear(silu(e)) [B, 6D], e [B, D])`` where ``e`` embeds the timestep (and sizes)."""

    def __init__(self, embedding_dim: int, use_additional_conditions: bool = False):
        super().__init__()
        self.emb = PixArtAlphaCombinedTimestepSizeEmbeddings(
            embedding_dim, size_emb_dim=embedding_dim // 3, use_additional_conditions=use_additional_conditions
        )
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 6 * embedding_dim, bias=True)

    def forward(self, timestep: torch.Tensor, added_cond_kwargs: dict | None = None, batch_size: int | None = None,
                hidden_dtype: torch.dtype | None = None):
        extra = added_cond_kwargs or {}
        embedded = self.emb(timestep, extra.get("resolution"), extra.get("aspect_ratio"),
                            batch_size=batch_size, hidden_dtype=hidden_dtype)
        return self.linear(self.silu(embedded)), embedded
