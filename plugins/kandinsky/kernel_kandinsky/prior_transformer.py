"""The unCLIP prior: a causal transformer that denoises a CLIP image embedding given the text
(Ramesh et al., "Hierarchical Text-Conditional Image Generation with CLIP Latents", arXiv:2204.06125, Sec. 2.2).

The token sequence is ``[text tokens (optional), text embedding, timestep, noisy image embedding,
prd token]`` (``num_embeddings + additional_embeddings`` positions), each projected to the model width
``num_attention_heads * attention_head_dim``, plus a learned positional embedding.  Causal self-attention
(masked where the text is padding) runs through ``num_layers`` blocks; the output at the final "prd"
token (or at the image-embedding position without it) is projected back to ``clip_embed_dim``.
``post_process_latents`` undoes the CLIP embedding normalisation (``* clip_std + clip_mean``).

Module names follow Diffusers' ``PriorTransformer``, so its checkpoints load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel_layers.attention import AttentionMixin
from kernel_layers.embeddings import TimestepEmbedding, Timesteps
from kernel_layers.transformer_2d import BasicTransformerBlock

MASKED = -10000.0  # the additive bias the checkpoints were trained with for masked positions


@dataclass
class PriorTransformerOutput(BaseOutput):
    """``predicted_image_embedding``: ``(B, clip_embed_dim)``."""

    predicted_image_embedding: torch.Tensor = None


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; use one of {list(allowed)}")


class PriorTransformer(ModelMixin, AttentionMixin):
    """Causal transformer prior over CLIP image embeddings (see the module docstring)."""

    component_kind = "denoiser"
    _supports_gradient_checkpointing = True
    _known_contract_failures = {
        "output_shape": "the prior maps (B, embedding_dim) embeddings to (B, clip_embed_dim); its config has no "
                        "in_channels/out_channels for the contract to read",
        "gradients_reach_parameters": "clip_mean/clip_std are the CLIP statistics post_process_latents applies after "
                                      "sampling; forward does not use them",
    }
    _no_split_modules = ["BasicTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 32,
        attention_head_dim: int = 64,
        num_layers: int = 20,
        embedding_dim: int = 768,
        num_embeddings: int = 77,
        additional_embeddings: int = 4,
        dropout: float = 0.0,
        time_embed_act_fn: str = "silu",
        norm_in_type: str | None = None,
        embedding_proj_norm_type: str | None = None,
        encoder_hid_proj_type: str | None = "linear",
        added_emb_type: str | None = "prd",
        time_embed_dim: int | None = None,
        embedding_proj_dim: int | None = None,
        clip_embed_dim: int | None = None,
    ):
        super().__init__()
        for name, value in (("norm_in_type", norm_in_type), ("embedding_proj_norm_type", embedding_proj_norm_type)):
            _choice(name, value, (None, "layer"))
        _choice("encoder_hid_proj_type", encoder_hid_proj_type, (None, "linear"))
        _choice("added_emb_type", added_emb_type, (None, "prd"))
        inner = num_attention_heads * attention_head_dim
        self.num_attention_heads, self.attention_head_dim = num_attention_heads, attention_head_dim
        self.additional_embeddings = additional_embeddings
        embedding_proj_dim = embedding_proj_dim or embedding_dim
        clip_embed_dim = clip_embed_dim or embedding_dim

        self.time_proj = Timesteps(inner, True, 0)
        self.time_embedding = TimestepEmbedding(inner, time_embed_dim or inner, out_dim=inner, act_fn=time_embed_act_fn)
        self.proj_in = nn.Linear(embedding_dim, inner)
        self.embedding_proj_norm = nn.LayerNorm(embedding_proj_dim) if embedding_proj_norm_type == "layer" else None
        self.embedding_proj = nn.Linear(embedding_proj_dim, inner)
        self.encoder_hidden_states_proj = nn.Linear(embedding_dim, inner) if encoder_hid_proj_type == "linear" else None
        length = num_embeddings + additional_embeddings
        self.positional_embedding = nn.Parameter(torch.zeros(1, length, inner))
        self.prd_embedding = nn.Parameter(torch.zeros(1, 1, inner)) if added_emb_type == "prd" else None
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, num_attention_heads, attention_head_dim, dropout=dropout, activation_fn="gelu",
                                  attention_bias=True)
            for _ in range(num_layers)
        ])
        self.norm_in = nn.LayerNorm(inner) if norm_in_type == "layer" else None
        self.norm_out = nn.LayerNorm(inner)
        self.proj_to_clip_embeddings = nn.Linear(inner, clip_embed_dim)
        causal = torch.full((length, length), MASKED).triu_(1)
        self.register_buffer("causal_attention_mask", causal[None], persistent=False)
        self.clip_mean = nn.Parameter(torch.zeros(1, clip_embed_dim))
        self.clip_std = nn.Parameter(torch.zeros(1, clip_embed_dim))
        self.gradient_checkpointing = False

    def _timestep_embedding(self, timestep, batch: int, device: torch.device) -> torch.Tensor:
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], dtype=torch.long, device=device)
        t = t.reshape(-1).to(device)
        t = t * torch.ones(batch, dtype=t.dtype, device=device)
        return self.time_embedding(self.time_proj(t).to(dtype=self.dtype))

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor | float | int, proj_embedding: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                return_dict: bool = True):
        """``hidden_states``: noisy image embeddings ``(B, embedding_dim)``; ``proj_embedding``: the text
        embedding ``(B, embedding_proj_dim)``; ``encoder_hidden_states``: text tokens ``(B, L, embedding_dim)``;
        ``attention_mask``: ``(B, L)``, True where the text token is real."""
        batch = hidden_states.shape[0]
        time = self._timestep_embedding(timestep, batch, hidden_states.device)
        if self.embedding_proj_norm is not None:
            proj_embedding = self.embedding_proj_norm(proj_embedding)
        proj = self.embedding_proj(proj_embedding)
        if self.encoder_hidden_states_proj is not None:
            if encoder_hidden_states is None:
                raise ValueError("this PriorTransformer projects text tokens (encoder_hid_proj_type='linear'); "
                                 "pass encoder_hidden_states")
            encoder_hidden_states = self.encoder_hidden_states_proj(encoder_hidden_states)
        x = self.proj_in(hidden_states)

        tokens = [] if encoder_hidden_states is None else [encoder_hidden_states]
        proj = proj[:, None] if proj.ndim == 2 else proj
        x = x[:, None] if x.ndim == 2 else x
        tokens += [proj, time[:, None], x]
        if self.prd_embedding is not None:
            tokens.append(self.prd_embedding.to(x.dtype).expand(batch, -1, -1))
        hidden = torch.cat(tokens, dim=1)
        # Positions before the image embedding: the text tokens, the text embedding and the timestep.
        prefix = (0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]) + proj.shape[1] + 1
        positions = self.positional_embedding.to(hidden.dtype)
        if positions.shape[1] < hidden.shape[1]:
            tail = 1 if self.prd_embedding is not None else 0
            positions = F.pad(positions, (0, 0, prefix, tail), value=0.0)
        hidden = hidden + positions

        bias = None
        if attention_mask is not None:
            bias = (1 - attention_mask.to(hidden.dtype)) * MASKED
            bias = F.pad(bias, (0, self.additional_embeddings), value=0.0)
            bias = (bias[:, None, :] + self.causal_attention_mask).to(hidden.dtype)  # (B, L, L), all heads alike
        if self.norm_in is not None:
            hidden = self.norm_in(hidden)
        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden = torch.utils.checkpoint.checkpoint(block, hidden, bias, use_reentrant=False)
            else:
                hidden = block(hidden, attention_mask=bias)
        hidden = self.norm_out(hidden)
        hidden = hidden[:, -1] if self.prd_embedding is not None else hidden[:, prefix:]
        out = self.proj_to_clip_embeddings(hidden)
        return PriorTransformerOutput(predicted_image_embedding=out) if return_dict else (out,)

    def post_process_latents(self, prior_latents: torch.Tensor) -> torch.Tensor:
        """Normalised CLIP image embeddings -> CLIP's own scale."""
        device = prior_latents.device
        return prior_latents * self.clip_std.to(device) + self.clip_mean.to(device)
