"""Residual blocks of diffusion UNets and VAEs (He et al., arXiv:1512.03385, as used by Ho et al., arXiv:2006.11239).

``ResnetBlock2D``: GroupNorm -> act -> conv -> (+ time embedding) -> GroupNorm -> act -> dropout -> conv,
plus a (1x1-projected) skip.  ``time_embedding_norm="scale_shift"`` modulates the second norm with
``(1 + scale, shift)`` instead of adding the embedding (Dhariwal & Nichol, arXiv:2105.05233).
``ResnetBlockCondNorm2D`` conditions both norms instead (adaptive group norm or spatial norm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernel_layers.activations import get_activation
from kernel_layers.conv import Conv2d
from kernel_layers.normalization import AdaGroupNorm, SpatialNorm
from kernel_layers.sampling import Downsample2D, Upsample2D


def _resampler(channels: int, up: bool, down: bool, kernel) -> nn.Module | None:
    if kernel == "fir":
        raise NotImplementedError("FIR-kernel resampling (kernel='fir') is not supported")
    if up:
        if kernel == "sde_vp":
            return nn.Upsample(scale_factor=2.0, mode="nearest")
        return Upsample2D(channels, use_conv=False)
    if down:
        if kernel == "sde_vp":
            return nn.AvgPool2d(kernel_size=2, stride=2)
        return Downsample2D(channels, use_conv=False, padding=1, name="op")
    return None


class _ResnetBase(nn.Module):
    """Shared skip path and resampling of the two residual block kinds."""

    def _init_skip(self, in_channels: int, out_channels: int, use_in_shortcut, conv_shortcut_bias: bool) -> None:
        self.use_in_shortcut = in_channels != out_channels if use_in_shortcut is None else use_in_shortcut
        self.conv_shortcut = (Conv2d(in_channels, out_channels, kernel_size=1, bias=conv_shortcut_bias)
                              if self.use_in_shortcut else None)

    def _resample(self, input_tensor: torch.Tensor, hidden_states: torch.Tensor):
        if self.upsample is not None:
            return self.upsample(input_tensor), self.upsample(hidden_states)
        if self.downsample is not None:
            return self.downsample(input_tensor), self.downsample(hidden_states)
        return input_tensor, hidden_states

    def _finish(self, input_tensor: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor.contiguous() if self.training else input_tensor)
        out = input_tensor + hidden_states
        return out / self.output_scale_factor if self.output_scale_factor != 1.0 else out


class ResnetBlock2D(_ResnetBase):
    """Residual block conditioned on a timestep embedding ``temb`` of width ``temb_channels`` (or none)."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, conv_shortcut: bool = False,
                 dropout: float = 0.0, temb_channels: int | None = 512, groups: int = 32, groups_out: int | None = None,
                 pre_norm: bool = True, eps: float = 1e-6, non_linearity: str = "swish", skip_time_act: bool = False,
                 time_embedding_norm: str = "default", kernel=None, output_scale_factor: float = 1.0,
                 use_in_shortcut: bool | None = None, up: bool = False, down: bool = False,
                 conv_shortcut_bias: bool = True, conv_2d_out_channels: int | None = None):
        super().__init__()
        if time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(f"time_embedding_norm={time_embedding_norm!r} is not supported by ResnetBlock2D; use "
                             "'default' or 'scale_shift' (ResnetBlockCondNorm2D takes 'ada_group' and 'spatial')")
        out_channels = in_channels if out_channels is None else out_channels
        self.pre_norm = True
        self.in_channels, self.out_channels = in_channels, out_channels
        self.use_conv_shortcut = conv_shortcut
        self.up, self.down = up, down
        self.output_scale_factor = output_scale_factor
        self.time_embedding_norm = time_embedding_norm
        self.skip_time_act = skip_time_act

        self.norm1 = nn.GroupNorm(num_groups=groups, num_channels=in_channels, eps=eps, affine=True)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.time_emb_proj = None
        if temb_channels is not None:
            width = out_channels * (2 if time_embedding_norm == "scale_shift" else 1)
            self.time_emb_proj = nn.Linear(temb_channels, width)
        self.norm2 = nn.GroupNorm(num_groups=groups_out or groups, num_channels=out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        conv_2d_out_channels = conv_2d_out_channels or out_channels
        self.conv2 = Conv2d(out_channels, conv_2d_out_channels, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = get_activation(non_linearity)
        self.upsample = _resampler(in_channels, up, False, kernel)
        self.downsample = _resampler(in_channels, False, down, kernel) if not up else None
        self._init_skip(in_channels, conv_2d_out_channels, use_in_shortcut, conv_shortcut_bias)

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        hidden_states = self.nonlinearity(self.norm1(input_tensor))
        input_tensor, hidden_states = self._resample(input_tensor, hidden_states)
        hidden_states = self.conv1(hidden_states)
        if self.time_emb_proj is not None and temb is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]
        if self.time_embedding_norm == "default":
            if temb is not None:
                hidden_states = hidden_states + temb
            hidden_states = self.norm2(hidden_states)
        else:
            if temb is None:
                raise ValueError("temb is required when time_embedding_norm='scale_shift'")
            scale, shift = temb.chunk(2, dim=1)
            hidden_states = self.norm2(hidden_states) * (1 + scale) + shift
        hidden_states = self.conv2(self.dropout(self.nonlinearity(hidden_states)))
        return self._finish(input_tensor, hidden_states)


class ResnetBlockCondNorm2D(_ResnetBase):
    """Residual block whose two norms are conditioned on ``temb`` (``"ada_group"`` or ``"spatial"``)."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, conv_shortcut: bool = False,
                 dropout: float = 0.0, temb_channels: int = 512, groups: int = 32, groups_out: int | None = None,
                 eps: float = 1e-6, non_linearity: str = "swish", time_embedding_norm: str = "ada_group",
                 output_scale_factor: float = 1.0, use_in_shortcut: bool | None = None, up: bool = False,
                 down: bool = False, conv_shortcut_bias: bool = True, conv_2d_out_channels: int | None = None):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.use_conv_shortcut = conv_shortcut
        self.up, self.down = up, down
        self.output_scale_factor = output_scale_factor
        self.time_embedding_norm = time_embedding_norm

        def norm(channels: int, num_groups: int) -> nn.Module:
            if time_embedding_norm == "ada_group":
                return AdaGroupNorm(temb_channels, channels, num_groups, eps=eps)
            if time_embedding_norm == "spatial":
                return SpatialNorm(channels, temb_channels)
            raise ValueError(f"time_embedding_norm={time_embedding_norm!r}; use 'ada_group' or 'spatial'")

        self.norm1 = norm(in_channels, groups)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = norm(out_channels, groups_out or groups)
        self.dropout = nn.Dropout(dropout)
        conv_2d_out_channels = conv_2d_out_channels or out_channels
        self.conv2 = Conv2d(out_channels, conv_2d_out_channels, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = get_activation(non_linearity)
        self.upsample = Upsample2D(in_channels, use_conv=False) if up else None
        self.downsample = Downsample2D(in_channels, use_conv=False, padding=1, name="op") if down and not up else None
        self._init_skip(in_channels, conv_2d_out_channels, use_in_shortcut, conv_shortcut_bias)

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        hidden_states = self.nonlinearity(self.norm1(input_tensor, temb))
        input_tensor, hidden_states = self._resample(input_tensor, hidden_states)
        hidden_states = self.nonlinearity(self.norm2(self.conv1(hidden_states), temb))
        hidden_states = self.conv2(self.dropout(hidden_states))
        return self._finish(input_tensor, hidden_states)
