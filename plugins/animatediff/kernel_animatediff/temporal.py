"""AnimateDiff's motion module: a transformer over the frame axis (Guo et al., arXiv:2307.04725).

A motion module takes the ``(B * F, C, H, W)`` feature map a UNet stage produced for every frame,
turns each pixel into a sequence of ``F`` tokens, runs self-attention along time (with sinusoidal
frame positions added before each attention) and adds the result back.  Module and parameter names
are Diffusers' (``motion_modules.<i>.proj_in``, ``.transformer_blocks.<j>.attn1.to_q``,
``.pos_embed.pe`` ...), so motion-adapter checkpoints load unchanged.

The attention, feed-forward and norms are the shared layers of ``kernel-layers``; what is specific to
the motion module (the frame positions and the frame-axis reshapes) is here.  With FreeNoise windows set
(``free_noise``), the block's attention runs window by window (:mod:`kernel_animatediff.free_noise`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kernel_layers.activations import FeedForward, chunked_feed_forward
from kernel_layers.attention import Attention

from kernel_animatediff.free_noise import windowed_attention


class SinusoidalPositionalEmbedding(nn.Module):
    """Adds fixed sin/cos positions (Vaswani et al., arXiv:1706.03762) to ``(B, L, D)`` sequences, ``L <= max_seq_length``.

    The table is the persistent buffer ``pe`` ``(1, max_seq_length, D)`` (sin in even, cos in odd
    channels), as motion-adapter checkpoints store it.
    """

    def __init__(self, embed_dim: int, max_seq_length: int = 32):
        super().__init__()
        position = torch.arange(max_seq_length, dtype=torch.float32)[:, None]
        rate = torch.exp(torch.arange(0, embed_dim, 2, dtype=torch.float32) * (-math.log(10000.0) / embed_dim))
        pe = torch.zeros(1, max_seq_length, embed_dim)
        pe[0, :, 0::2] = torch.sin(position * rate)
        pe[0, :, 1::2] = torch.cos(position * rate)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        if length > self.pe.shape[1]:
            raise ValueError(f"a sequence of {length} frames is longer than the {self.pe.shape[1]} positions this "
                             "motion module was trained with (motion_max_seq_length)")
        return x + self.pe[:, :length]


class TemporalTransformerBlock(nn.Module):
    """Pre-norm block along the frame axis: self-attention, a second attention (self-attention when
    ``double_self_attention``, else cross-attention on ``encoder_hidden_states``), feed-forward; frame
    positions are added to the normed input of both attentions."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, dropout: float = 0.0,
                 cross_attention_dim: int | None = None, activation_fn: str = "geglu", attention_bias: bool = False,
                 double_self_attention: bool = True, norm_elementwise_affine: bool = True, norm_eps: float = 1e-5,
                 max_seq_length: int = 32):
        super().__init__()

        def attention(cross_dim: int | None) -> Attention:
            return Attention(query_dim=dim, cross_attention_dim=cross_dim, heads=num_attention_heads,
                             dim_head=attention_head_dim, dropout=dropout, bias=attention_bias)

        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.attn1 = attention(None)
        self.norm2 = self.attn2 = None
        if cross_attention_dim is not None or double_self_attention:
            self.norm2 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
            self.attn2 = attention(None if double_self_attention else cross_attention_dim)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn)
        self.pos_embed = SinusoidalPositionalEmbedding(dim, max_seq_length=max_seq_length)
        self._chunk_size: int | None = None
        self._chunk_dim = 0
        #: FreeNoise windows ``(context_length, context_stride, weighting_scheme)``, or None (whole sequence).
        self.free_noise: tuple[int, int, str] | None = None

    def set_chunk_feed_forward(self, chunk_size: int | None, dim: int = 0) -> None:
        self._chunk_size, self._chunk_dim = chunk_size, dim

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        if self.free_noise is not None and hidden_states.shape[1] >= self.free_noise[0]:
            hidden_states = windowed_attention(self, hidden_states, encoder_hidden_states, *self.free_noise)
        else:
            hidden_states = self.attn1(self.pos_embed(self.norm1(hidden_states))) + hidden_states
            if self.attn2 is not None:
                hidden_states = self.attn2(self.pos_embed(self.norm2(hidden_states)),
                                           encoder_hidden_states=encoder_hidden_states) + hidden_states
        normed = self.norm3(hidden_states)
        if self._chunk_size is not None:
            return chunked_feed_forward(self.ff, normed, self._chunk_dim, self._chunk_size) + hidden_states
        return self.ff(normed) + hidden_states


class AnimateDiffTransformer3D(nn.Module):
    """One motion module: group norm over each video's frames, ``proj_in``, temporal blocks, ``proj_out``, residual.

    ``forward(hidden_states (B * F, C, H, W), num_frames=F)`` returns the same shape; every pixel of
    every video is one sequence of ``F`` tokens.
    """

    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 88, in_channels: int | None = None,
                 num_layers: int = 1, dropout: float = 0.0, norm_num_groups: int = 32,
                 cross_attention_dim: int | None = None, attention_bias: bool = False, activation_fn: str = "geglu",
                 norm_elementwise_affine: bool = True, double_self_attention: bool = True,
                 max_seq_length: int = 32):
        super().__init__()
        if in_channels is None:
            raise ValueError("AnimateDiffTransformer3D needs in_channels")
        if in_channels % norm_num_groups:
            raise ValueError(f"in_channels={in_channels} is not divisible by norm_num_groups={norm_num_groups}")
        inner = num_attention_heads * attention_head_dim
        self.num_attention_heads, self.attention_head_dim, self.in_channels = num_attention_heads, attention_head_dim, in_channels
        self.norm = nn.GroupNorm(num_groups=norm_num_groups, num_channels=in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(in_channels, inner)
        self.transformer_blocks = nn.ModuleList([
            TemporalTransformerBlock(inner, num_attention_heads, attention_head_dim, dropout=dropout,
                                     cross_attention_dim=cross_attention_dim, activation_fn=activation_fn,
                                     attention_bias=attention_bias, double_self_attention=double_self_attention,
                                     norm_elementwise_affine=norm_elementwise_affine, max_seq_length=max_seq_length)
            for _ in range(num_layers)
        ])
        self.proj_out = nn.Linear(inner, in_channels)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                num_frames: int = 1) -> torch.Tensor:
        frames_total, channels, height, width = hidden_states.shape
        batch = frames_total // num_frames
        residual = hidden_states
        # (B*F, C, H, W) -> (B, C, F, H, W): the group norm sees each video's frames together
        x = hidden_states.reshape(batch, num_frames, channels, height, width).permute(0, 2, 1, 3, 4)
        x = self.norm(x)
        # -> (B*H*W, F, C): one sequence of frames per pixel
        x = x.permute(0, 3, 4, 2, 1).reshape(batch * height * width, num_frames, channels)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, encoder_hidden_states=encoder_hidden_states)
        x = self.proj_out(x)
        x = x.reshape(batch, height, width, num_frames, channels).permute(0, 3, 4, 1, 2).contiguous()
        return x.reshape(frames_total, channels, height, width) + residual


def motion_modules(channels: int, num_layers: int, heads: int, layers_per_module, norm_num_groups: int,
                   max_seq_length: int, cross_attention_dim: int | None = None,
                   double_self_attention: bool = True) -> nn.ModuleList:
    """``num_layers`` motion modules for a stage of width ``channels`` (``layers_per_module``: an int or one per module;
    ``double_self_attention``: whether each block's second attention is a second self-attention)."""
    if isinstance(layers_per_module, int):
        layers_per_module = [layers_per_module] * num_layers
    layers_per_module = list(layers_per_module)
    if len(layers_per_module) != num_layers:
        raise ValueError(f"the temporal transformer layer counts {layers_per_module} must be one int or "
                         f"{num_layers} entries (one per motion module)")
    if channels % heads:
        raise ValueError(f"a stage of {channels} channels cannot be split into {heads} motion attention heads")
    return nn.ModuleList([
        AnimateDiffTransformer3D(num_attention_heads=heads, attention_head_dim=channels // heads, in_channels=channels,
                                 num_layers=n, norm_num_groups=norm_num_groups, cross_attention_dim=cross_attention_dim,
                                 double_self_attention=double_self_attention, max_seq_length=max_seq_length)
        for n in layers_per_module
    ])
