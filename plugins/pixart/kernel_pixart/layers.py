"""Layers only PixArt uses: the timestep + size embedding and adaLN-single (Chen et al., arXiv:2310.00426, sec. 2.3).

The caption projection (:class:`kernel_layers.dit_embeddings.PixArtAlphaTextProjection`) and the
patch embedding are shared with the MMDiT families and live in :mod:`kernel_layers.dit_embeddings`.
"""

from __future__ import annotations

import torch
from torch import nn

from kernel_layers.dit_embeddings import time_features
from kernel_layers.embeddings import TimestepEmbedding


class PixArtAlphaCombinedTimestepSizeEmbeddings(nn.Module):
    """PixArt-alpha: timestep embedding, plus (1024px models) resolution and aspect-ratio embeddings.

    With ``use_additional_conditions`` the two size embeddings (``size_emb_dim`` each) are
    concatenated and added to the timestep embedding.
    """

    def __init__(self, embedding_dim: int, size_emb_dim: int, use_additional_conditions: bool = False):
        super().__init__()
        self.outdim = size_emb_dim
        self.time_proj = time_features()
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=embedding_dim)
        self.use_additional_conditions = use_additional_conditions
        if use_additional_conditions:
            self.additional_condition_proj = time_features()
            self.resolution_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=size_emb_dim)
            self.aspect_ratio_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=size_emb_dim)

    def _size_embedding(self, values: torch.Tensor, embedder: nn.Module, batch_size: int, dtype) -> torch.Tensor:
        features = self.additional_condition_proj(values.flatten()).to(dtype)
        return embedder(features).reshape(batch_size, -1)

    def forward(self, timestep, resolution, aspect_ratio, batch_size, hidden_dtype) -> torch.Tensor:
        emb = self.timestep_embedder(self.time_proj(timestep).to(dtype=hidden_dtype))
        if not self.use_additional_conditions:
            return emb
        if resolution is None or aspect_ratio is None:
            raise ValueError("this model uses size conditioning: added_cond_kwargs needs 'resolution' and 'aspect_ratio'")
        sizes = torch.cat([
            self._size_embedding(resolution, self.resolution_embedder, batch_size, hidden_dtype),
            self._size_embedding(aspect_ratio, self.aspect_ratio_embedder, batch_size, hidden_dtype),
        ], dim=1)
        return emb + sizes



class AdaLayerNormSingle(nn.Module):
    """PixArt adaLN-single: ``(linear(silu(e)) [B, 6D], e [B, D])`` where ``e`` embeds the timestep (and sizes).

    One MLP of the timestep serves the whole network; each block adds its own learned table to the result.
    """

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
