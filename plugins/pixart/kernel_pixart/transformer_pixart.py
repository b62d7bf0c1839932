"""The PixArt-alpha / PixArt-Sigma transformer (Chen et al., arXiv:2310.00426 and arXiv:2403.04692).

A DiT (Peebles & Xie, arXiv:2212.09748) with three changes: cross-attention to T5 caption tokens
in every block; "adaLN-single" -- one MLP turns the timestep (and, for the 1024px PixArt-alpha
models, the resolution and aspect ratio) into six modulation vectors shared by all blocks, each
block adding its own learned ``scale_shift_table``; and sin-cos positions recomputed for the
latent grid with ``interpolation_scale`` (so one model serves many aspect ratios).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel_layers.attention import AttentionMixin
from kernel_layers.dit_embeddings import PatchEmbed, PixArtAlphaTextProjection
from kernel_layers.transformer_2d import BasicTransformerBlock, Transformer2DModelOutput, mask_to_bias

from kernel_pixart.layers import AdaLayerNormSingle


def unpatchify(tokens: torch.Tensor, rows: int, cols: int, patch: int, channels: int) -> torch.Tensor:
    """``(B, rows*cols, p*p*C)`` -> ``(B, C, rows*p, cols*p)``."""
    x = tokens.reshape(-1, rows, cols, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, channels, rows * patch, cols * patch)


class PixArtTransformer2DModel(AttentionMixin, ModelMixin):
    """PixArt-alpha / Sigma transformer.  ``forward(hidden_states (B,C,H,W), encoder_hidden_states (B,S,caption_channels),
    timestep (B,), added_cond_kwargs={"resolution","aspect_ratio"}, encoder_attention_mask (B,S))``
    -> ``sample (B, out_channels, H, W)`` (noise and, with ``out_channels = 2C``, learned variance)."""

    component_kind = "denoiser"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "PatchEmbed"]

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        in_channels: int = 4,
        out_channels: int | None = 8,
        num_layers: int = 28,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = 1152,
        attention_bias: bool = True,
        sample_size: int = 128,
        patch_size: int = 2,
        activation_fn: str = "gelu-approximate",
        num_embeds_ada_norm: int | None = 1000,
        upcast_attention: bool = False,
        norm_type: str = "ada_norm_single",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        interpolation_scale: int | None = None,
        use_additional_conditions: bool | None = None,
        caption_channels: int | None = None,
        attention_type: str | None = "default",
    ):
        super().__init__()
        if norm_type != "ada_norm_single":
            raise ValueError(f"norm_type={norm_type!r}: PixArt transformers use 'ada_norm_single'")
        if num_embeds_ada_norm is None:
            raise ValueError("num_embeds_ada_norm must be set for norm_type='ada_norm_single'")
        if attention_type != "default":
            raise ValueError(f"attention_type={attention_type!r} is not supported; use 'default'")
        self.attention_head_dim = attention_head_dim
        self.inner_dim = num_attention_heads * attention_head_dim
        self.out_channels = in_channels if out_channels is None else out_channels
        if use_additional_conditions is None:
            use_additional_conditions = sample_size == 128  # the 1024px PixArt-alpha models
        self.use_additional_conditions = use_additional_conditions
        self.height = self.width = sample_size
        scale = interpolation_scale if interpolation_scale is not None else max(sample_size // 64, 1)
        self.pos_embed = PatchEmbed(height=sample_size, width=sample_size, patch_size=patch_size,
                                    in_channels=in_channels, embed_dim=self.inner_dim, interpolation_scale=scale)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim, dropout=dropout,
                                  cross_attention_dim=cross_attention_dim, activation_fn=activation_fn,
                                  num_embeds_ada_norm=num_embeds_ada_norm, attention_bias=attention_bias,
                                  upcast_attention=upcast_attention, norm_type=norm_type,
                                  norm_elementwise_affine=norm_elementwise_affine, norm_eps=norm_eps)
            for _ in range(num_layers)
        ])
        self.norm_out = nn.LayerNorm(self.inner_dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, self.inner_dim) / self.inner_dim**0.5)
        self.proj_out = nn.Linear(self.inner_dim, patch_size * patch_size * self.out_channels)
        self.adaln_single = AdaLayerNormSingle(self.inner_dim, use_additional_conditions=use_additional_conditions)
        self.caption_projection = None
        if caption_channels is not None:
            self.caption_projection = PixArtAlphaTextProjection(in_features=caption_channels, hidden_size=self.inner_dim)
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        if self.use_additional_conditions and added_cond_kwargs is None:
            raise ValueError("this PixArt model uses size conditioning: pass added_cond_kwargs="
                             "{'resolution': ..., 'aspect_ratio': ...}")
        if timestep is None:
            raise ValueError("PixArtTransformer2DModel.forward needs timestep")
        patch = self.config.patch_size
        if hidden_states.shape[-2] % patch or hidden_states.shape[-1] % patch:
            raise ValueError(f"latent size {tuple(hidden_states.shape[-2:])} is not divisible by patch_size={patch}")
        attention_mask = mask_to_bias(attention_mask, hidden_states.dtype)
        encoder_attention_mask = mask_to_bias(encoder_attention_mask, hidden_states.dtype)
        batch = hidden_states.shape[0]
        rows, cols = hidden_states.shape[-2] // patch, hidden_states.shape[-1] // patch

        x = self.pos_embed(hidden_states)
        t, embedded_t = self.adaln_single(timestep, added_cond_kwargs, batch_size=batch, hidden_dtype=x.dtype)
        if self.caption_projection is not None:
            encoder_hidden_states = self.caption_projection(encoder_hidden_states).view(batch, -1, x.shape[-1])
        for block in self.transformer_blocks:
            args = (x, attention_mask, encoder_hidden_states, encoder_attention_mask, t, cross_attention_kwargs, None)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)

        shift, scale = (self.scale_shift_table[None] + embedded_t[:, None].to(self.scale_shift_table.device)).chunk(2, dim=1)
        x = self.norm_out(x) * (1 + scale.to(x.device)) + shift.to(x.device)
        out = unpatchify(self.proj_out(x), rows, cols, patch, self.out_channels)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)
