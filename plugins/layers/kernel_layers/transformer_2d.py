"""The spatial transformer of latent diffusion UNets (Rombach et al., arXiv:2112.10752).

``Transformer2DModel`` (continuous input) normalizes a ``(B, C, H, W)`` feature map, projects it
to tokens (1x1 conv, or linear with ``use_linear_projection``), runs ``num_layers``
:class:`BasicTransformerBlock` s (self-attention, cross-attention on the text tokens, feed-forward,
each pre-normed with a residual) and projects back, adding the input.

Patch (DiT / PixArt) and vector-quantized inputs of Diffusers' class are not built here; their
families add them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput

from kernel_layers.activations import FeedForward, chunked_feed_forward
from kernel_layers.attention import Attention, AttentionMixin
from kernel_layers.normalization import AdaLayerNorm, AdaLayerNormContinuous, AdaLayerNormZero

NORM_TYPES = ("layer_norm", "ada_norm", "ada_norm_zero", "ada_norm_single", "ada_norm_continuous", "layer_norm_i2vgen")


def mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A ``(B, L)`` keep-mask (1 keep, 0 drop) -> a ``(B, 1, L)`` additive bias (0 / -10000); others pass through."""
    if mask is None or mask.ndim != 2:
        return mask
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, feed-forward.

    ``norm_type`` picks the norms: ``layer_norm`` (Stable Diffusion), ``ada_norm`` /
    ``ada_norm_zero`` (timestep-conditioned, DiT), ``ada_norm_single`` (PixArt: shift/scale/gate
    come from a shared table plus the block's timestep input), ``ada_norm_continuous``,
    ``layer_norm_i2vgen``.
    """

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, dropout: float = 0.0,
                 cross_attention_dim: int | None = None, activation_fn: str = "geglu",
                 num_embeds_ada_norm: int | None = None, attention_bias: bool = False,
                 only_cross_attention: bool = False, double_self_attention: bool = False,
                 upcast_attention: bool = False, norm_elementwise_affine: bool = True, norm_type: str = "layer_norm",
                 norm_eps: float = 1e-5, final_dropout: bool = False, attention_type: str = "default",
                 positional_embeddings: str | None = None, num_positional_embeddings: int | None = None,
                 ada_norm_continous_conditioning_embedding_dim: int | None = None, ada_norm_bias: int | None = None,
                 ff_inner_dim: int | None = None, ff_bias: bool = True, attention_out_bias: bool = True):
        super().__init__()
        if norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type={norm_type!r} is not supported; use one of {NORM_TYPES}")
        if norm_type in ("ada_norm", "ada_norm_zero") and num_embeds_ada_norm is None:
            raise ValueError(f"norm_type={norm_type!r} needs num_embeds_ada_norm")
        if attention_type != "default":
            raise ValueError(f"attention_type={attention_type!r} (GLIGEN gated attention) is not supported; use 'default'")
        if positional_embeddings is not None:
            raise ValueError("positional_embeddings inside transformer blocks are not supported; use None")
        self.dim = dim
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        self.only_cross_attention = only_cross_attention
        self.double_self_attention = double_self_attention
        self.norm_type = norm_type
        self.num_embeds_ada_norm = num_embeds_ada_norm
        self.pos_embed = None

        def continuous(kind: str) -> AdaLayerNormContinuous:
            return AdaLayerNormContinuous(dim, ada_norm_continous_conditioning_embedding_dim, norm_elementwise_affine,
                                          norm_eps, ada_norm_bias, kind)

        if norm_type == "ada_norm":
            self.norm1 = AdaLayerNorm(dim, num_embeds_ada_norm)
        elif norm_type == "ada_norm_zero":
            self.norm1 = AdaLayerNormZero(dim, num_embeds_ada_norm)
        elif norm_type == "ada_norm_continuous":
            self.norm1 = continuous("rms_norm")
        else:
            self.norm1 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
        self.attn1 = Attention(query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
                               bias=attention_bias, cross_attention_dim=cross_attention_dim if only_cross_attention else None,
                               upcast_attention=upcast_attention, out_bias=attention_out_bias)

        self.norm2 = self.attn2 = None
        if cross_attention_dim is not None or double_self_attention:
            if norm_type == "ada_norm":
                self.norm2 = AdaLayerNorm(dim, num_embeds_ada_norm)
            elif norm_type == "ada_norm_continuous":
                self.norm2 = continuous("rms_norm")
            else:
                self.norm2 = nn.LayerNorm(dim, norm_eps, norm_elementwise_affine)
            self.attn2 = Attention(query_dim=dim, cross_attention_dim=None if double_self_attention else cross_attention_dim,
                                   heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
                                   bias=attention_bias, upcast_attention=upcast_attention, out_bias=attention_out_bias)
        elif norm_type == "ada_norm_single":
            self.norm2 = nn.LayerNorm(dim, norm_eps, norm_elementwise_affine)

        if norm_type == "ada_norm_continuous":
            self.norm3 = continuous("layer_norm")
        elif norm_type in ("ada_norm_zero", "ada_norm", "layer_norm"):
            self.norm3 = nn.LayerNorm(dim, norm_eps, norm_elementwise_affine)
        else:
            self.norm3 = None
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn, final_dropout=final_dropout,
                              inner_dim=ff_inner_dim, bias=ff_bias)
        if norm_type == "ada_norm_single":
            self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        self._chunk_size: int | None = None
        self._chunk_dim = 0

    def set_chunk_feed_forward(self, chunk_size: int | None, dim: int = 0) -> None:
        self._chunk_size = chunk_size
        self._chunk_dim = dim

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                timestep: torch.Tensor | None = None, cross_attention_kwargs: dict[str, Any] | None = None,
                class_labels: torch.Tensor | None = None, added_cond_kwargs: dict[str, torch.Tensor] | None = None):
        kwargs = {k: v for k, v in (cross_attention_kwargs or {}).items() if k != "gligen"}
        norm_type = self.norm_type

        # 1. self-attention
        if norm_type == "ada_norm":
            normed = self.norm1(hidden_states, timestep)
        elif norm_type == "ada_norm_zero":
            normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(
                hidden_states, timestep, class_labels, hidden_dtype=hidden_states.dtype)
        elif norm_type == "ada_norm_continuous":
            normed = self.norm1(hidden_states, added_cond_kwargs["pooled_text_emb"])
        elif norm_type == "ada_norm_single":
            mods = self.scale_shift_table[None] + timestep.reshape(hidden_states.shape[0], 6, -1)
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=1)
            normed = self.norm1(hidden_states) * (1 + scale_msa) + shift_msa
        else:
            normed = self.norm1(hidden_states)
        attn_output = self.attn1(normed, encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
                                 attention_mask=attention_mask, **kwargs)
        if norm_type == "ada_norm_zero":
            attn_output = gate_msa.unsqueeze(1) * attn_output
        elif norm_type == "ada_norm_single":
            attn_output = gate_msa * attn_output
        hidden_states = attn_output + hidden_states
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.squeeze(1)

        # 2. cross-attention
        if self.attn2 is not None:
            if norm_type == "ada_norm":
                normed = self.norm2(hidden_states, timestep)
            elif norm_type == "ada_norm_continuous":
                normed = self.norm2(hidden_states, added_cond_kwargs["pooled_text_emb"])
            elif norm_type == "ada_norm_single":
                normed = hidden_states  # PixArt does not norm before cross-attention
            else:
                normed = self.norm2(hidden_states)
            hidden_states = self.attn2(normed, encoder_hidden_states=encoder_hidden_states,
                                       attention_mask=encoder_attention_mask, **kwargs) + hidden_states

        # 3. feed-forward
        if norm_type == "ada_norm_continuous":
            normed = self.norm3(hidden_states, added_cond_kwargs["pooled_text_emb"])
        elif norm_type == "ada_norm_single":
            normed = self.norm2(hidden_states) * (1 + scale_mlp) + shift_mlp
        elif self.norm3 is not None:
            normed = self.norm3(hidden_states)
        if norm_type == "ada_norm_zero":
            normed = normed * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        if self._chunk_size is not None:
            ff_output = chunked_feed_forward(self.ff, normed, self._chunk_dim, self._chunk_size)
        else:
            ff_output = self.ff(normed)
        if norm_type == "ada_norm_zero":
            ff_output = gate_mlp.unsqueeze(1) * ff_output
        elif norm_type == "ada_norm_single":
            ff_output = gate_mlp * ff_output
        hidden_states = ff_output + hidden_states
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.squeeze(1)
        return hidden_states


@dataclass
class Transformer2DModelOutput(BaseOutput):
    """``sample``: ``(B, C, H, W)`` output of :class:`Transformer2DModel`."""

    sample: torch.Tensor = None


class Transformer2DModel(ModelMixin, AttentionMixin):
    """Spatial transformer over a continuous ``(B, in_channels, H, W)`` feature map (see module docstring)."""

    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock"]

    @register_to_config
    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 88, in_channels: int | None = None,
                 out_channels: int | None = None, num_layers: int = 1, dropout: float = 0.0, norm_num_groups: int = 32,
                 cross_attention_dim: int | None = None, attention_bias: bool = False, sample_size: int | None = None,
                 num_vector_embeds: int | None = None, patch_size: int | None = None, activation_fn: str = "geglu",
                 num_embeds_ada_norm: int | None = None, use_linear_projection: bool = False,
                 only_cross_attention: bool = False, double_self_attention: bool = False,
                 upcast_attention: bool = False, norm_type: str = "layer_norm", norm_elementwise_affine: bool = True,
                 norm_eps: float = 1e-5, attention_type: str = "default", caption_channels: int | None = None,
                 interpolation_scale: float | None = None, use_additional_conditions: bool | None = None):
        super().__init__()
        if num_vector_embeds is not None or patch_size is not None:
            raise NotImplementedError(
                "Transformer2DModel here takes continuous input only (in_channels set, patch_size=None and "
                "num_vector_embeds=None); patch and vector-quantized inputs come with the families that use them"
            )
        if in_channels is None:
            raise ValueError("Transformer2DModel needs in_channels (the channels of the feature map)")
        if norm_type == "layer_norm" and num_embeds_ada_norm is not None:
            norm_type = "ada_norm"  # old configs left norm_type at its default
        self.use_linear_projection = use_linear_projection
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        self.inner_dim = inner_dim = num_attention_heads * attention_head_dim
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.is_input_continuous = True
        self.is_input_vectorized = self.is_input_patches = False
        self.gradient_checkpointing = False

        self.norm = nn.GroupNorm(num_groups=norm_num_groups, num_channels=in_channels, eps=1e-6, affine=True)
        if use_linear_projection:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, dropout=dropout,
                                  cross_attention_dim=cross_attention_dim, activation_fn=activation_fn,
                                  num_embeds_ada_norm=num_embeds_ada_norm, attention_bias=attention_bias,
                                  only_cross_attention=only_cross_attention, double_self_attention=double_self_attention,
                                  upcast_attention=upcast_attention, norm_type=norm_type,
                                  norm_elementwise_affine=norm_elementwise_affine, norm_eps=norm_eps,
                                  attention_type=attention_type)
            for _ in range(num_layers)
        ])
        if use_linear_projection:
            self.proj_out = nn.Linear(inner_dim, self.out_channels)
        else:
            self.proj_out = nn.Conv2d(inner_dim, self.out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                timestep: torch.Tensor | None = None, added_cond_kwargs: dict[str, torch.Tensor] | None = None,
                class_labels: torch.Tensor | None = None, cross_attention_kwargs: dict[str, Any] | None = None,
                attention_mask: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                return_dict: bool = True):
        if hidden_states.ndim != 4:
            raise ValueError(f"hidden_states must be (batch, channels, height, width), got {tuple(hidden_states.shape)}")
        attention_mask = mask_to_bias(attention_mask, hidden_states.dtype)
        encoder_attention_mask = mask_to_bias(encoder_attention_mask, hidden_states.dtype)
        batch, _, height, width = hidden_states.shape
        residual = hidden_states

        hidden_states = self.norm(hidden_states)
        if not self.use_linear_projection:
            hidden_states = self.proj_in(hidden_states)
        hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch, height * width, hidden_states.shape[1])
        if self.use_linear_projection:
            hidden_states = self.proj_in(hidden_states)

        for block in self.transformer_blocks:
            args = (hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask, timestep,
                    cross_attention_kwargs, class_labels, added_cond_kwargs)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                hidden_states = block(*args)

        if self.use_linear_projection:
            hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()
        if not self.use_linear_projection:
            hidden_states = self.proj_out(hidden_states)
        output = hidden_states + residual
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)
