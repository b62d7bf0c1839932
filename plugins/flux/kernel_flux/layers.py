"""Layers only Flux uses: its attention processor, the single-stream AdaLN-Zero and the guidance embedding.

Rotary position embeddings are in :mod:`kernel_flux.rotary`; the shared MMDiT pieces in
:mod:`kernel_layers.joint_attention` and :mod:`kernel_layers.dit_embeddings`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernel_flux.rotary import apply_rotary_emb
from kernel_layers.dit_embeddings import CombinedTimestepTextProjEmbeddings
from kernel_layers.embeddings import TimestepEmbedding
from kernel_layers.joint_attention import BackendOptions, project_streams
from kernel_layers.normalization import adaln_norm, modulate


class FluxAttnProcessor(BackendOptions):
    """Flux attention over ``[text tokens, image tokens]`` with multi-axis rotary embeddings.

    ``image_rotary_emb`` is the ``(cos, sin)`` pair for the joined sequence.  With a text stream
    it returns ``(image_out, text_out)``; without one (single-stream blocks, where the caller has
    already joined the streams) the attention output, projected by ``to_out`` when the layer has it.
    """

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None, **kwargs: Any):
        image, text = project_streams(attn, hidden_states, encoder_hidden_states)
        if text is None:
            q, k, v = image
        else:
            q, k, v = (torch.cat([b, a], dim=2) for a, b in zip(image, text))
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=2)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=2)
        out = attn.attend(q, k, v, attention_mask, backend=self.backend, slice_size=self.slice_size)
        out = attn.merge_heads(out).to(q.dtype)
        if text is None:
            return out if attn.to_out is None else attn.to_out[1](attn.to_out[0](out))
        n_text = encoder_hidden_states.shape[1]
        text_out, image_out = out[:, :n_text], out[:, n_text:]
        return attn.to_out[1](attn.to_out[0](image_out)), attn.to_add_out(text_out)


class AdaLayerNormZeroSingle(nn.Module):
    """adaLN-Zero with one (attention + MLP in parallel) branch: ``(norm(x) * (1 + scale) + shift, gate)``."""

    def __init__(self, embedding_dim: int, norm_type: str = "layer_norm", bias: bool = True):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 3 * embedding_dim, bias=bias)
        self.norm = adaln_norm(embedding_dim, norm_type)

    def forward(self, x: torch.Tensor, emb: torch.Tensor):
        shift, scale, gate = self.linear(self.silu(emb)).chunk(3, dim=1)
        return modulate(self.norm(x), shift, scale), gate


class CombinedTimestepGuidanceTextProjEmbeddings(CombinedTimestepTextProjEmbeddings):
    """Flux-dev conditioning vector: timestep, distilled guidance strength and pooled text, summed."""

    def __init__(self, embedding_dim: int, pooled_projection_dim: int):
        super().__init__(embedding_dim, pooled_projection_dim)
        self.guidance_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=embedding_dim)

    def forward(self, timestep: torch.Tensor, guidance: torch.Tensor, pooled_projection: torch.Tensor) -> torch.Tensor:
        dtype = pooled_projection.dtype
        t = self.timestep_embedder(self.time_proj(timestep).to(dtype=dtype))
        g = self.guidance_embedder(self.time_proj(guidance).to(dtype=dtype))
        return (t + g) + self.text_embedder(pooled_projection)
