"""2x nearest-neighbour upsampling and stride-2 downsampling layers of UNets and VAEs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernel_layers.conv import Conv2d
from kernel_layers.normalization import RMSNorm


def _channel_norm(norm_type: str | None, channels: int, eps, elementwise_affine) -> nn.Module | None:
    if norm_type is None:
        return None
    if norm_type == "ln_norm":
        return nn.LayerNorm(channels, eps, elementwise_affine)
    if norm_type == "rms_norm":
        return RMSNorm(channels, eps, elementwise_affine)
    raise ValueError(f"norm_type={norm_type!r} is not supported; use None, 'ln_norm' or 'rms_norm'")


def _norm_channels_last(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x upsampling (or to ``output_size``), then an optional 3x3 convolution.

    ``use_conv_transpose`` replaces both with a stride-2 transposed convolution.  The convolution
    is stored as ``conv`` (or ``Conv2d_0`` when ``name`` says so), as in Diffusers checkpoints.
    """

    def __init__(self, channels: int, use_conv: bool = False, use_conv_transpose: bool = False,
                 out_channels: int | None = None, name: str = "conv", kernel_size: int | None = None, padding=1,
                 norm_type=None, eps=None, elementwise_affine=None, bias=True, interpolate=True):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_conv_transpose = use_conv_transpose
        self.name = name
        self.interpolate = interpolate
        self.norm = _channel_norm(norm_type, channels, eps, elementwise_affine)
        conv = None
        if use_conv_transpose:
            conv = nn.ConvTranspose2d(channels, self.out_channels, kernel_size=kernel_size or 4, stride=2,
                                      padding=padding, bias=bias)
        elif use_conv:
            conv = Conv2d(channels, self.out_channels, kernel_size=kernel_size or 3, padding=padding, bias=bias)
        if name == "conv":
            self.conv = conv
        else:
            self.Conv2d_0 = conv

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        if hidden_states.shape[1] != self.channels:
            raise ValueError(f"Upsample2D expects {self.channels} channels, got {hidden_states.shape[1]}")
        if self.norm is not None:
            hidden_states = _norm_channels_last(self.norm, hidden_states)
        if self.use_conv_transpose:
            return self.conv(hidden_states)
        if self.interpolate:
            if output_size is None:
                hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
            else:
                hidden_states = F.interpolate(hidden_states, size=output_size, mode="nearest")
        if self.use_conv:
            hidden_states = (self.conv if self.name == "conv" else self.Conv2d_0)(hidden_states)
        return hidden_states


class Downsample2D(nn.Module):
    """Stride-2 3x3 convolution (``padding=0`` pads right/bottom by one first) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool = False, out_channels: int | None = None, padding: int = 1,
                 name: str = "conv", kernel_size=3, norm_type=None, eps=None, elementwise_affine=None, bias=True):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.padding = padding
        self.name = name
        self.norm = _channel_norm(norm_type, channels, eps, elementwise_affine)
        if use_conv:
            conv = Conv2d(channels, self.out_channels, kernel_size=kernel_size, stride=2, padding=padding, bias=bias)
        else:
            if channels != self.out_channels:
                raise ValueError("Downsample2D without a convolution cannot change the channel count")
            conv = nn.AvgPool2d(kernel_size=2, stride=2)
        if name == "conv":
            # Old checkpoints name the layer ``Conv2d_0``; Diffusers registers it under both names.
            self.Conv2d_0 = conv
        self.conv = conv

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if hidden_states.shape[1] != self.channels:
            raise ValueError(f"Downsample2D expects {self.channels} channels, got {hidden_states.shape[1]}")
        if self.norm is not None:
            hidden_states = _norm_channels_last(self.norm, hidden_states)
        if self.use_conv and self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1), mode="constant", value=0)
        return self.conv(hidden_states)
