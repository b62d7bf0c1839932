"""Normalization layers, plain and conditioned on an embedding.

* adaptive layer norm (``scale``/``shift`` predicted from the timestep embedding) and its
  "zero" variant with gates, from DiT (Peebles & Xie, arXiv:2212.09748);
* adaptive group norm for conditioned ResNet blocks;
* spatially conditioned norm from MoVQ (Zheng et al., arXiv:2209.09002);
* RMSNorm (Zhang & Sennrich, arXiv:1910.07467).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from kernel_layers.activations import get_activation
from kernel_layers.embeddings import CombinedTimestepLabelEmbeddings


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(inputs.float(), self.normalized_shape, weight, bias, self.eps).to(inputs.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension; statistics in float32."""

    def __init__(self, dim, eps: float, elementwise_affine: bool = True, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.dim = torch.Size((dim,) if isinstance(dim, numbers.Integral) else dim)
        self.weight = nn.Parameter(torch.ones(self.dim)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(self.dim)) if elementwise_affine and bias else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.eps)
        if self.weight is None:
            return hidden_states.to(input_dtype)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(self.weight.dtype)
        hidden_states = hidden_states * self.weight
        if self.bias is not None:
            hidden_states = hidden_states + self.bias
        return hidden_states


class LpNorm(nn.Module):
    """``F.normalize`` as a module (L2 query/key normalization)."""

    def __init__(self, p: int = 2, dim: int = -1, eps: float = 1e-12):
        super().__init__()
        self.p, self.dim, self.eps = p, dim, eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.normalize(hidden_states, p=self.p, dim=self.dim, eps=self.eps)


class AdaGroupNorm(nn.Module):
    """GroupNorm without affine parameters, then ``x * (1 + scale) + shift`` predicted from ``emb``."""

    def __init__(self, embedding_dim: int, out_dim: int, num_groups: int, act_fn: str | None = None, eps: float = 1e-5):
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.act = get_activation(act_fn) if act_fn is not None else None
        self.linear = nn.Linear(embedding_dim, out_dim * 2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            emb = self.act(emb)
        scale, shift = self.linear(emb)[:, :, None, None].chunk(2, dim=1)
        return F.group_norm(x, self.num_groups, eps=self.eps) * (1 + scale) + shift


class SpatialNorm(nn.Module):
    """GroupNorm of ``f`` modulated per pixel by 1x1 convolutions of the (resized) quantized latent ``zq``."""

    def __init__(self, f_channels: int, zq_channels: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(num_channels=f_channels, num_groups=32, eps=1e-6, affine=True)
        self.conv_y = nn.Conv2d(zq_channels, f_channels, kernel_size=1)
        self.conv_b = nn.Conv2d(zq_channels, f_channels, kernel_size=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


class AdaLayerNorm(nn.Module):
    """LayerNorm modulated by an embedding of the timestep (``emb``) or a given ``temb``."""

    def __init__(self, embedding_dim: int, num_embeddings: int | None = None, output_dim: int | None = None,
                 norm_elementwise_affine: bool = False, norm_eps: float = 1e-5, chunk_dim: int = 0):
        super().__init__()
        self.chunk_dim = chunk_dim
        output_dim = output_dim or embedding_dim * 2
        self.emb = nn.Embedding(num_embeddings, embedding_dim) if num_embeddings is not None else None
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, output_dim)
        self.norm = nn.LayerNorm(output_dim // 2, norm_eps, norm_elementwise_affine)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | None = None, temb: torch.Tensor | None = None):
        if self.emb is not None:
            temb = self.emb(timestep)
        temb = self.linear(self.silu(temb))
        if self.chunk_dim == 1:
            shift, scale = temb.chunk(2, dim=1)
            shift, scale = shift[:, None, :], scale[:, None, :]
        else:
            scale, shift = temb.chunk(2, dim=0)
        return self.norm(x) * (1 + scale) + shift


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with ``(B, D)`` terms broadcast over the tokens of ``(B, L, D)`` (DiT's adaLN)."""
    return x * (1 + scale[:, None]) + shift[:, None]


def adaln_norm(dim: int, norm_type: str = "layer_norm", accepted: tuple[str, ...] = ("layer_norm",)) -> nn.Module:
    """The affine-free norm an adaLN layer modulates: LayerNorm (eps 1e-6) or its float32 form."""
    if norm_type not in accepted:
        raise ValueError(f"norm_type={norm_type!r} is not supported; use {' or '.join(map(repr, accepted))}")
    if norm_type == "fp32_layer_norm":
        return FP32LayerNorm(dim, elementwise_affine=False, bias=False)
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class AdaLayerNormZero(nn.Module):
    """adaLN-Zero: returns the modulated input plus the gate/shift/scale terms for the MLP branch."""

    def __init__(self, embedding_dim: int, num_embeddings: int | None = None, norm_type: str = "layer_norm",
                 bias: bool = True):
        super().__init__()
        self.emb = CombinedTimestepLabelEmbeddings(num_embeddings, embedding_dim) if num_embeddings is not None else None
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 6 * embedding_dim, bias=bias)
        self.norm = adaln_norm(embedding_dim, norm_type, ("layer_norm", "fp32_layer_norm"))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | None = None, class_labels: torch.Tensor | None = None,
                hidden_dtype: torch.dtype | None = None, emb: torch.Tensor | None = None):
        if self.emb is not None:
            emb = self.emb(timestep, class_labels, hidden_dtype=hidden_dtype)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.linear(self.silu(emb)).chunk(6, dim=1)
        return modulate(self.norm(x), shift_msa, scale_msa), gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormContinuous(nn.Module):
    """LayerNorm or RMSNorm modulated by a continuous conditioning vector (``scale`` first, then ``shift``)."""

    def __init__(self, embedding_dim: int, conditioning_embedding_dim: int, elementwise_affine: bool = True,
                 eps: float = 1e-5, bias: bool = True, norm_type: str = "layer_norm"):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(conditioning_embedding_dim, embedding_dim * 2, bias=bias)
        if norm_type == "layer_norm":
            self.norm = nn.LayerNorm(embedding_dim, eps, elementwise_affine, bias=bias)
        elif norm_type == "rms_norm":
            self.norm = RMSNorm(embedding_dim, eps, elementwise_affine)
        else:
            raise ValueError(f"norm_type={norm_type!r} is not supported; use 'layer_norm' or 'rms_norm'")

    def forward(self, x: torch.Tensor, conditioning_embedding: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(self.silu(conditioning_embedding).to(x.dtype)).chunk(2, dim=1)
        return modulate(self.norm(x), shift, scale)
