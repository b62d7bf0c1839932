"""The 1-D blocks of Dance Diffusion's UNet (Harmonai's audio-diffusion, after Crowson's v-diffusion
UNets): residual conv blocks with single-group norms, multi-head self-attention over time, and fixed
cubic-kernel resampling by two.  Attribute names equal Diffusers' state-dict keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernel_layers.attention_dispatch import dispatch_attention

#: The 8-tap cubic (Keys) kernel for resampling by two.
CUBIC = (-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875)


class Downsample1d(nn.Module):
    """Halve the length: reflect-pad, then a stride-2 depthwise convolution with the cubic kernel."""

    def __init__(self, pad_mode: str = "reflect"):
        super().__init__()
        self.pad_mode = pad_mode
        self.register_buffer("kernel", torch.tensor(CUBIC))  # kept in checkpoints, as Diffusers does
        self.pad = len(CUBIC) // 2 - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), self.pad_mode)
        weight = self.kernel.to(x).expand(channels, 1, -1)
        return F.conv1d(x, weight, stride=2, groups=channels)


class Upsample1d(nn.Module):
    """Double the length: reflect-pad, then a stride-2 depthwise transposed convolution with twice the cubic kernel."""

    def __init__(self, pad_mode: str = "reflect"):
        super().__init__()
        self.pad_mode = pad_mode
        self.register_buffer("kernel", torch.tensor(CUBIC) * 2)
        self.pad = len(CUBIC) // 2 - 1

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        channels, edge = x.shape[1], (self.pad + 1) // 2
        x = F.pad(x, (edge, edge), self.pad_mode)
        weight = self.kernel.to(x).expand(channels, 1, -1)
        return F.conv_transpose1d(x, weight, stride=2, padding=self.pad * 2 + 1, groups=channels)


class SelfAttention1d(nn.Module):
    """Pre-norm multi-head self-attention over time with a residual, ``(B, C, T) -> (B, C, T)``."""

    def __init__(self, in_channels: int, n_head: int = 1, dropout_rate: float = 0.0):
        super().__init__()
        if n_head < 1 or in_channels % n_head:
            raise ValueError(f"SelfAttention1d: {in_channels} channels do not split into {n_head} heads (one head "
                             "per 32 channels: give attention blocks at least 32 channels, a multiple of 32)")
        self.channels, self.num_heads = in_channels, n_head
        self.group_norm = nn.GroupNorm(1, num_channels=in_channels)
        self.query = nn.Linear(in_channels, in_channels)
        self.key = nn.Linear(in_channels, in_channels)
        self.value = nn.Linear(in_channels, in_channels)
        self.proj_attn = nn.Linear(in_channels, in_channels, bias=True)
        self.dropout = nn.Dropout(dropout_rate)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, H, T, C / H)
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        h = self.group_norm(x).transpose(1, 2)
        out = dispatch_attention(self._heads(self.query(h)), self._heads(self.key(h)), self._heads(self.value(h)))
        out = self.proj_attn(out.transpose(1, 2).reshape(b, t, c))
        return self.dropout(out.transpose(1, 2)) + x


class ResConvBlock(nn.Module):
    """Two width-5 convolutions with single-group norms and GELUs, plus a (1x1-projected) skip."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, is_last: bool = False):
        super().__init__()
        self.is_last = is_last
        self.has_conv_skip = in_channels != out_channels
        if self.has_conv_skip:
            self.conv_skip = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.conv_1 = nn.Conv1d(in_channels, mid_channels, 5, padding=2)
        self.group_norm_1 = nn.GroupNorm(1, mid_channels)
        self.gelu_1 = nn.GELU()
        self.conv_2 = nn.Conv1d(mid_channels, out_channels, 5, padding=2)
        if not is_last:
            self.group_norm_2 = nn.GroupNorm(1, out_channels)
            self.gelu_2 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.conv_skip(x) if self.has_conv_skip else x
        h = self.conv_2(self.gelu_1(self.group_norm_1(self.conv_1(x))))
        if not self.is_last:
            h = self.gelu_2(self.group_norm_2(h))
        return h + skip


def _stack(in_channels: int, mid_channels: int, out_channels: int, is_last: bool = False) -> nn.ModuleList:
    """Three residual blocks: in -> mid -> mid -> out."""
    return nn.ModuleList([ResConvBlock(in_channels, mid_channels, mid_channels),
                          ResConvBlock(mid_channels, mid_channels, mid_channels),
                          ResConvBlock(mid_channels, mid_channels, out_channels, is_last=is_last)])


def _attentions(mid_channels: int, out_channels: int, count: int = 3) -> nn.ModuleList:
    """One self-attention after each residual block, a head per 32 channels."""
    widths = [mid_channels] * (count - 1) + [out_channels]
    return nn.ModuleList([SelfAttention1d(w, w // 32) for w in widths])


class _Block1D(nn.Module):
    """Residual blocks, each optionally followed by self-attention."""

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        attentions = self._modules.get("attentions")
        for i, resnet in enumerate(self.resnets):
            x = resnet(x)
            if attentions is not None:
                x = attentions[i](x)
        return x


class DownBlock1D(_Block1D):
    def __init__(self, out_channels: int, in_channels: int, mid_channels: int | None = None, attention: bool = False):
        super().__init__()
        mid = out_channels if mid_channels is None else mid_channels
        self.down = Downsample1d()
        self.resnets = _stack(in_channels, mid, out_channels)
        if attention:
            self.attentions = _attentions(mid, out_channels)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None):
        x = self._body(self.down(hidden_states))
        return x, (x,)


class AttnDownBlock1D(DownBlock1D):
    def __init__(self, out_channels: int, in_channels: int, mid_channels: int | None = None):
        super().__init__(out_channels, in_channels, mid_channels, attention=True)


class DownBlock1DNoSkip(_Block1D):
    """The first block: no downsampling; the time embedding joins the input as extra channels."""

    def __init__(self, out_channels: int, in_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid = out_channels if mid_channels is None else mid_channels
        self.resnets = _stack(in_channels, mid, out_channels)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None):
        x = self._body(torch.cat([hidden_states, temb], dim=1))
        return x, (x,)


class UpBlock1D(_Block1D):
    """Concatenate the skip, residual blocks (and attention), then upsample (all but the last block)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None, attention: bool = False,
                 upsample: bool = True, is_last: bool = False):
        super().__init__()
        mid = (out_channels if attention else in_channels) if mid_channels is None else mid_channels
        self.resnets = _stack(2 * in_channels, mid, out_channels, is_last=is_last)
        if attention:
            self.attentions = _attentions(mid, out_channels)
        if upsample:
            self.up = Upsample1d()

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None) -> torch.Tensor:
        x = self._body(torch.cat([hidden_states, res_hidden_states_tuple[-1]], dim=1))
        up = self._modules.get("up")
        return up(x) if up is not None else x


class AttnUpBlock1D(UpBlock1D):
    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__(in_channels, out_channels, mid_channels, attention=True)


class UpBlock1DNoSkip(UpBlock1D):
    """The last block: no upsampling, and no norm or activation after its final convolution."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__(in_channels, out_channels, mid_channels, upsample=False, is_last=True)


class UNetMidBlock1D(_Block1D):
    """Down by two, six residual blocks with self-attention, up by two."""

    def __init__(self, mid_channels: int, in_channels: int, out_channels: int | None = None):
        super().__init__()
        out = in_channels if out_channels is None else out_channels
        self.down = Downsample1d()
        self.resnets = nn.ModuleList([ResConvBlock(in_channels, mid_channels, mid_channels)]
                                     + [ResConvBlock(mid_channels, mid_channels, mid_channels) for _ in range(4)]
                                     + [ResConvBlock(mid_channels, mid_channels, out)])
        self.attentions = _attentions(mid_channels, out, count=6)
        self.up = Upsample1d()

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.up(self._body(self.down(hidden_states)))


DOWN_BLOCKS = {"DownBlock1D": DownBlock1D, "AttnDownBlock1D": AttnDownBlock1D, "DownBlock1DNoSkip": DownBlock1DNoSkip}
UP_BLOCKS = {"UpBlock1D": UpBlock1D, "AttnUpBlock1D": AttnUpBlock1D, "UpBlock1DNoSkip": UpBlock1DNoSkip}
MID_BLOCKS = {"UNetMidBlock1D": UNetMidBlock1D}
