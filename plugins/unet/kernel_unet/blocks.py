"""UNet resolution stages (Ronneberger et al., arXiv:1505.04597, as used for diffusion by Ho et al. and Rombach et al.).

Down stages return ``(hidden_states, skip_states)``; up stages consume those skips (newest first)
by channel concatenation.  Cross-attention stages interleave each ResNet with a spatial
transformer (:class:`kernel_layers.transformer_2d.Transformer2DModel`); ``Attn*`` stages use single
self-attention layers (DDPM).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernel_layers.blocks_2d import (
    DownEncoderBlock2D,
    UNetMidBlock2D,
    UpDecoderBlock2D,
    make_resnet,
    run_checkpointed,
    spatial_self_attention,
)
from kernel_layers.resnet import ResnetBlock2D
from kernel_layers.sampling import Downsample2D, Upsample2D
from kernel_layers.transformer_2d import Transformer2DModel

from kernel_unet.simple_blocks import SIMPLE_DOWN_TYPES, SIMPLE_MID_TYPE, SIMPLE_UP_TYPES, get_simple_block

DOWN_BLOCK_TYPES = ("DownBlock2D", "CrossAttnDownBlock2D", "AttnDownBlock2D", "DownEncoderBlock2D", *SIMPLE_DOWN_TYPES)
UP_BLOCK_TYPES = ("UpBlock2D", "CrossAttnUpBlock2D", "AttnUpBlock2D", "UpDecoderBlock2D", *SIMPLE_UP_TYPES)
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", SIMPLE_MID_TYPE, None)


def _per_layer(value, num_layers: int) -> list:
    return [value] * num_layers if isinstance(value, int) else list(value)


def _transformer(heads: int, channels: int, layers: int, cross_dim: int, groups: int, linear: bool, only_cross: bool,
                 upcast: bool, attention_type: str) -> Transformer2DModel:
    return Transformer2DModel(heads, channels // heads, in_channels=channels, num_layers=layers,
                              cross_attention_dim=cross_dim, norm_num_groups=groups, use_linear_projection=linear,
                              only_cross_attention=only_cross, upcast_attention=upcast, attention_type=attention_type)


def apply_freeu(resolution_idx: int, hidden_states: torch.Tensor, res_hidden_states: torch.Tensor,
                s1: float, s2: float, b1: float, b2: float):
    """FreeU (Si et al., arXiv:2309.11497): amplify half the backbone channels, damp low frequencies of the skip."""
    if resolution_idx not in (0, 1):
        return hidden_states, res_hidden_states
    b, s = (b1, s1) if resolution_idx == 0 else (b2, s2)
    half = hidden_states.shape[1] // 2
    hidden_states = torch.cat([hidden_states[:, :half] * b, hidden_states[:, half:]], dim=1)
    return hidden_states, _fourier_filter(res_hidden_states, threshold=1, scale=s)


def _fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()  # FFTs of half types are unsupported or unstable
    freq = torch.fft.fftshift(torch.fft.fftn(x, dim=(-2, -1)), dim=(-2, -1))
    b, c, h, w = freq.shape
    mask = torch.ones((b, c, h, w), device=x.device)
    ch, cw = h // 2, w // 2
    mask[..., ch - threshold:ch + threshold, cw - threshold:cw + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(dtype)


class _UpMixin:
    def _freeu(self, hidden_states, res_hidden_states):
        s1, s2, b1, b2 = (getattr(self, k, None) for k in ("s1", "s2", "b1", "b2"))
        if s1 and s2 and b1 and b2:
            return apply_freeu(self.resolution_idx, hidden_states, res_hidden_states, s1=s1, s2=s2, b1=b1, b2=b2)
        return hidden_states, res_hidden_states


def _resnets(in_channels, out_channels, temb_channels, num_layers, eps, groups, dropout, act, scale_shift, scale,
             pre_norm, skip_channels=None, prev_output_channel=None):
    blocks = []
    for i in range(num_layers):
        if skip_channels is None:  # down stage
            cin = in_channels if i == 0 else out_channels
        else:  # up stage: previous output + the skip it consumes
            skip = skip_channels if i == num_layers - 1 else out_channels
            cin = (prev_output_channel if i == 0 else out_channels) + skip
        blocks.append(ResnetBlock2D(in_channels=cin, out_channels=out_channels, temb_channels=temb_channels, eps=eps,
                                    groups=groups, dropout=dropout, time_embedding_norm=scale_shift,
                                    non_linearity=act, output_scale_factor=scale, pre_norm=pre_norm))
    return nn.ModuleList(blocks)


def _downsampler(channels: int, padding: int) -> nn.ModuleList:
    return nn.ModuleList([Downsample2D(channels, use_conv=True, out_channels=channels, padding=padding, name="op")])


class DownBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 output_scale_factor: float = 1.0, add_downsample: bool = True, downsample_padding: int = 1):
        super().__init__()
        self.resnets = _resnets(in_channels, out_channels, temb_channels, num_layers, resnet_eps, resnet_groups,
                                dropout, resnet_act_fn, resnet_time_scale_shift, output_scale_factor, resnet_pre_norm)
        self.downsamplers = _downsampler(out_channels, downsample_padding) if add_downsample else None
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs):
        skips = ()
        for resnet in self.resnets:
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class CrossAttnDownBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, transformer_layers_per_block: int | list[int] = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 resnet_pre_norm: bool = True, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
                 output_scale_factor: float = 1.0, downsample_padding: int = 1, add_downsample: bool = True,
                 dual_cross_attention: bool = False, use_linear_projection: bool = False,
                 only_cross_attention: bool = False, upcast_attention: bool = False, attention_type: str = "default"):
        super().__init__()
        if dual_cross_attention:
            raise ValueError("dual_cross_attention=True (Versatile Diffusion) is not supported")
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        layers = _per_layer(transformer_layers_per_block, num_layers)
        self.resnets = _resnets(in_channels, out_channels, temb_channels, num_layers, resnet_eps, resnet_groups,
                                dropout, resnet_act_fn, resnet_time_scale_shift, output_scale_factor, resnet_pre_norm)
        self.attentions = nn.ModuleList([
            _transformer(num_attention_heads, out_channels, layers[i], cross_attention_dim, resnet_groups,
                         use_linear_projection, only_cross_attention, upcast_attention, attention_type)
            for i in range(num_layers)
        ])
        self.downsamplers = _downsampler(out_channels, downsample_padding) if add_downsample else None
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None, encoder_attention_mask: torch.Tensor | None = None,
                additional_residuals: torch.Tensor | None = None):
        skips = ()
        last = len(self.resnets) - 1
        for i, (resnet, attn) in enumerate(zip(self.resnets, self.attentions)):
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
                                 encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]
            if i == last and additional_residuals is not None:
                hidden_states = hidden_states + additional_residuals
            skips += (hidden_states,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class AttnDownBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 attention_head_dim: int | None = 1, output_scale_factor: float = 1.0, downsample_padding: int = 1,
                 downsample_type: str | None = "conv"):
        super().__init__()
        head_dim = attention_head_dim if attention_head_dim is not None else out_channels
        self.downsample_type = downsample_type
        self.resnets = _resnets(in_channels, out_channels, temb_channels, num_layers, resnet_eps, resnet_groups,
                                dropout, resnet_act_fn, resnet_time_scale_shift, output_scale_factor, resnet_pre_norm)
        self.attentions = nn.ModuleList([
            spatial_self_attention(out_channels, head_dim, resnet_groups, resnet_eps, output_scale_factor)
            for _ in range(num_layers)
        ])
        if downsample_type == "conv":
            self.downsamplers = _downsampler(out_channels, downsample_padding)
        elif downsample_type == "resnet":
            self.downsamplers = nn.ModuleList([ResnetBlock2D(
                in_channels=out_channels, out_channels=out_channels, temb_channels=temb_channels, eps=resnet_eps,
                groups=resnet_groups, dropout=dropout, time_embedding_norm=resnet_time_scale_shift,
                non_linearity=resnet_act_fn, output_scale_factor=output_scale_factor, pre_norm=resnet_pre_norm,
                down=True)])
        elif downsample_type is None:
            self.downsamplers = None
        else:
            raise ValueError(f"downsample_type={downsample_type!r}; use 'conv', 'resnet' or None")
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, upsample_size=None,
                cross_attention_kwargs: dict[str, Any] | None = None):
        kwargs = {k: v for k, v in (cross_attention_kwargs or {}).items() if k != "scale"}
        skips = ()
        for resnet, attn in zip(self.resnets, self.attentions):
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
            hidden_states = attn(hidden_states, **kwargs)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states, temb) if self.downsample_type == "resnet" else down(hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class UpBlock2D(_UpMixin, nn.Module):
    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 resolution_idx: int | None = None, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, resnet_pre_norm: bool = True, output_scale_factor: float = 1.0,
                 add_upsample: bool = True):
        super().__init__()
        self.resnets = _resnets(in_channels, out_channels, temb_channels, num_layers, resnet_eps, resnet_groups,
                                dropout, resnet_act_fn, resnet_time_scale_shift, output_scale_factor, resnet_pre_norm,
                                skip_channels=in_channels, prev_output_channel=prev_output_channel)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) \
            if add_upsample else None
        self.gradient_checkpointing = False
        self.resolution_idx = resolution_idx

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None, upsample_size=None, *args, **kwargs) -> torch.Tensor:
        for resnet in self.resnets:
            skip, res_hidden_states_tuple = res_hidden_states_tuple[-1], res_hidden_states_tuple[:-1]
            hidden_states, skip = self._freeu(hidden_states, skip)
            hidden_states = run_checkpointed(resnet, self, torch.cat([hidden_states, skip], dim=1), temb)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states, upsample_size)
        return hidden_states


class CrossAttnUpBlock2D(_UpMixin, nn.Module):
    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 resolution_idx: int | None = None, dropout: float = 0.0, num_layers: int = 1,
                 transformer_layers_per_block: int | list[int] = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 resnet_pre_norm: bool = True, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
                 output_scale_factor: float = 1.0, add_upsample: bool = True, dual_cross_attention: bool = False,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False, attention_type: str = "default"):
        super().__init__()
        if dual_cross_attention:
            raise ValueError("dual_cross_attention=True (Versatile Diffusion) is not supported")
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        layers = _per_layer(transformer_layers_per_block, num_layers)
        self.resnets = _resnets(in_channels, out_channels, temb_channels, num_layers, resnet_eps, resnet_groups,
                                dropout, resnet_act_fn, resnet_time_scale_shift, output_scale_factor, resnet_pre_norm,
                                skip_channels=in_channels, prev_output_channel=prev_output_channel)
        self.attentions = nn.ModuleList([
            _transformer(num_attention_heads, out_channels, layers[i], cross_attention_dim, resnet_groups,
                         use_linear_projection, only_cross_attention, upcast_attention, attention_type)
            for i in range(num_layers)
        ])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) \
            if add_upsample else None
        self.gradient_checkpointing = False
        self.resolution_idx = resolution_idx

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None, upsample_size=None,
                attention_mask: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None):
        for resnet, attn in zip(self.resnets, self.attentions):
            skip, res_hidden_states_tuple = res_hidden_states_tuple[-1], res_hidden_states_tuple[:-1]
            hidden_states, skip = self._freeu(hidden_states, skip)
            hidden_states = run_checkpointed(resnet, self, torch.cat([hidden_states, skip], dim=1), temb)
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
                                 encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states, upsample_size)
        return hidden_states


class AttnUpBlock2D(_UpMixin, nn.Module):
    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 resolution_idx: int | None = None, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, resnet_pre_norm: bool = True, attention_head_dim: int | None = 1,
                 output_scale_factor: float = 1.0, upsample_type: str | None = "conv"):
        super().__init__()
        head_dim = attention_head_dim if attention_head_dim is not None else out_channels
        self.upsample_type = upsample_type
        self.resnets = _resnets(in_channels, out_channels, temb_channels, num_layers, resnet_eps, resnet_groups,
                                dropout, resnet_act_fn, resnet_time_scale_shift, output_scale_factor, resnet_pre_norm,
                                skip_channels=in_channels, prev_output_channel=prev_output_channel)
        self.attentions = nn.ModuleList([
            spatial_self_attention(out_channels, head_dim, resnet_groups, resnet_eps, output_scale_factor)
            for _ in range(num_layers)
        ])
        if upsample_type == "conv":
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
        elif upsample_type == "resnet":
            self.upsamplers = nn.ModuleList([ResnetBlock2D(
                in_channels=out_channels, out_channels=out_channels, temb_channels=temb_channels, eps=resnet_eps,
                groups=resnet_groups, dropout=dropout, time_embedding_norm=resnet_time_scale_shift,
                non_linearity=resnet_act_fn, output_scale_factor=output_scale_factor, pre_norm=resnet_pre_norm,
                up=True)])
        elif upsample_type is None:
            self.upsamplers = None
        else:
            raise ValueError(f"upsample_type={upsample_type!r}; use 'conv', 'resnet' or None")
        self.gradient_checkpointing = False
        self.resolution_idx = resolution_idx

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None, upsample_size=None, *args, **kwargs) -> torch.Tensor:
        for resnet, attn in zip(self.resnets, self.attentions):
            skip, res_hidden_states_tuple = res_hidden_states_tuple[-1], res_hidden_states_tuple[:-1]
            hidden_states = run_checkpointed(resnet, self, torch.cat([hidden_states, skip], dim=1), temb)
            hidden_states = attn(hidden_states)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states, temb) if self.upsample_type == "resnet" else up(hidden_states)
        return hidden_states


class UNetMidBlock2DCrossAttn(nn.Module):
    """ResNet, then ``num_layers`` x (spatial transformer, ResNet)."""

    def __init__(self, in_channels: int, temb_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 num_layers: int = 1, transformer_layers_per_block: int | list[int] = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int | None = 32, resnet_groups_out: int | None = None, resnet_pre_norm: bool = True,
                 num_attention_heads: int = 1, output_scale_factor: float = 1.0, cross_attention_dim: int = 1280,
                 dual_cross_attention: bool = False, use_linear_projection: bool = False,
                 upcast_attention: bool = False, attention_type: str = "default"):
        super().__init__()
        if dual_cross_attention:
            raise ValueError("dual_cross_attention=True (Versatile Diffusion) is not supported")
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        resnet_groups_out = resnet_groups_out or resnet_groups
        layers = _per_layer(transformer_layers_per_block, num_layers)

        def resnet(cin: int, groups: int) -> nn.Module:
            return ResnetBlock2D(in_channels=cin, out_channels=out_channels, temb_channels=temb_channels,
                                 eps=resnet_eps, groups=groups, groups_out=resnet_groups_out if cin == in_channels else None,
                                 dropout=dropout, time_embedding_norm=resnet_time_scale_shift,
                                 non_linearity=resnet_act_fn, output_scale_factor=output_scale_factor,
                                 pre_norm=resnet_pre_norm)

        self.resnets = nn.ModuleList([resnet(in_channels, resnet_groups)] +
                                     [resnet(out_channels, resnet_groups_out) for _ in range(num_layers)])
        self.attentions = nn.ModuleList([
            _transformer(num_attention_heads, out_channels, layers[i], cross_attention_dim, resnet_groups_out,
                         use_linear_projection, False, upcast_attention, attention_type)
            for i in range(num_layers)
        ])
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
                                 encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
        return hidden_states


def get_down_block(down_block_type: str, *, num_layers: int, in_channels: int, out_channels: int,
                   temb_channels: int | None, add_downsample: bool, resnet_eps: float, resnet_act_fn: str,
                   transformer_layers_per_block=1, num_attention_heads: int | None = None,
                   resnet_groups: int | None = None, cross_attention_dim: int | None = None,
                   downsample_padding: int | None = None, dual_cross_attention: bool = False,
                   use_linear_projection: bool = False, only_cross_attention: bool = False,
                   upcast_attention: bool = False, resnet_time_scale_shift: str = "default",
                   attention_type: str = "default", attention_head_dim: int | None = None,
                   downsample_type: str | None = None, dropout: float = 0.0, resnet_skip_time_act: bool = False,
                   resnet_out_scale_factor: float = 1.0, cross_attention_norm: str | None = None, **_: Any) -> nn.Module:
    """Build a down stage from its Diffusers class name."""
    name = down_block_type[7:] if down_block_type.startswith("UNetRes") else down_block_type
    if name in SIMPLE_DOWN_TYPES:
        return get_simple_block(name, up=False, num_layers=num_layers, in_channels=in_channels,
                                out_channels=out_channels, temb_channels=temb_channels, resnet_eps=resnet_eps,
                                resnet_act_fn=resnet_act_fn, resnet_groups=resnet_groups,
                                resnet_time_scale_shift=resnet_time_scale_shift, dropout=dropout,
                                cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
                                only_cross_attention=only_cross_attention, add_resample=add_downsample,
                                skip_time_act=resnet_skip_time_act, output_scale_factor=resnet_out_scale_factor,
                                cross_attention_norm=cross_attention_norm)
    common = dict(num_layers=num_layers, in_channels=in_channels, out_channels=out_channels, dropout=dropout,
                  resnet_eps=resnet_eps, resnet_act_fn=resnet_act_fn, resnet_groups=resnet_groups,
                  resnet_time_scale_shift=resnet_time_scale_shift)
    if name == "DownBlock2D":
        return DownBlock2D(temb_channels=temb_channels, add_downsample=add_downsample,
                           downsample_padding=downsample_padding, **common)
    if name == "CrossAttnDownBlock2D":
        if cross_attention_dim is None:
            raise ValueError("CrossAttnDownBlock2D needs cross_attention_dim")
        return CrossAttnDownBlock2D(temb_channels=temb_channels, add_downsample=add_downsample,
                                    downsample_padding=downsample_padding,
                                    transformer_layers_per_block=transformer_layers_per_block,
                                    cross_attention_dim=cross_attention_dim, num_attention_heads=num_attention_heads,
                                    dual_cross_attention=dual_cross_attention,
                                    use_linear_projection=use_linear_projection,
                                    only_cross_attention=only_cross_attention, upcast_attention=upcast_attention,
                                    attention_type=attention_type, **common)
    if name == "AttnDownBlock2D":
        return AttnDownBlock2D(temb_channels=temb_channels, downsample_padding=downsample_padding,
                               attention_head_dim=attention_head_dim if attention_head_dim is not None else num_attention_heads,
                               downsample_type=(downsample_type or "conv") if add_downsample else None, **common)
    if name == "DownEncoderBlock2D":
        return DownEncoderBlock2D(add_downsample=add_downsample, downsample_padding=downsample_padding, **common)
    raise ValueError(f"down block type {down_block_type!r} is not supported; use one of {DOWN_BLOCK_TYPES}")


def get_up_block(up_block_type: str, *, num_layers: int, in_channels: int, out_channels: int,
                 prev_output_channel: int, temb_channels: int | None, add_upsample: bool, resnet_eps: float,
                 resnet_act_fn: str, resolution_idx: int | None = None, transformer_layers_per_block=1,
                 num_attention_heads: int | None = None, resnet_groups: int | None = None,
                 cross_attention_dim: int | None = None, dual_cross_attention: bool = False,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False, resnet_time_scale_shift: str = "default",
                 attention_type: str = "default", attention_head_dim: int | None = None,
                 upsample_type: str | None = None, dropout: float = 0.0, resnet_skip_time_act: bool = False,
                 resnet_out_scale_factor: float = 1.0, cross_attention_norm: str | None = None, **_: Any) -> nn.Module:
    """Build an up stage from its Diffusers class name."""
    name = up_block_type[7:] if up_block_type.startswith("UNetRes") else up_block_type
    if name in SIMPLE_UP_TYPES:
        return get_simple_block(name, up=True, num_layers=num_layers, in_channels=in_channels,
                                out_channels=out_channels, temb_channels=temb_channels, resnet_eps=resnet_eps,
                                resnet_act_fn=resnet_act_fn, resnet_groups=resnet_groups,
                                resnet_time_scale_shift=resnet_time_scale_shift, dropout=dropout,
                                cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
                                only_cross_attention=only_cross_attention, add_resample=add_upsample,
                                prev_output_channel=prev_output_channel, resolution_idx=resolution_idx,
                                skip_time_act=resnet_skip_time_act, output_scale_factor=resnet_out_scale_factor,
                                cross_attention_norm=cross_attention_norm)
    common = dict(num_layers=num_layers, in_channels=in_channels, out_channels=out_channels,
                  resolution_idx=resolution_idx, dropout=dropout, resnet_eps=resnet_eps,
                  resnet_act_fn=resnet_act_fn, resnet_groups=resnet_groups,
                  resnet_time_scale_shift=resnet_time_scale_shift)
    if name == "UpBlock2D":
        return UpBlock2D(prev_output_channel=prev_output_channel, temb_channels=temb_channels,
                         add_upsample=add_upsample, **common)
    if name == "CrossAttnUpBlock2D":
        if cross_attention_dim is None:
            raise ValueError("CrossAttnUpBlock2D needs cross_attention_dim")
        return CrossAttnUpBlock2D(prev_output_channel=prev_output_channel, temb_channels=temb_channels,
                                  add_upsample=add_upsample, transformer_layers_per_block=transformer_layers_per_block,
                                  num_attention_heads=num_attention_heads, cross_attention_dim=cross_attention_dim,
                                  dual_cross_attention=dual_cross_attention,
                                  use_linear_projection=use_linear_projection,
                                  only_cross_attention=only_cross_attention, upcast_attention=upcast_attention,
                                  attention_type=attention_type, **common)
    if name == "AttnUpBlock2D":
        return AttnUpBlock2D(prev_output_channel=prev_output_channel, temb_channels=temb_channels,
                             attention_head_dim=attention_head_dim if attention_head_dim is not None else num_attention_heads,
                             upsample_type=(upsample_type or "conv") if add_upsample else None, **common)
    if name == "UpDecoderBlock2D":
        return UpDecoderBlock2D(add_upsample=add_upsample, temb_channels=temb_channels, **common)
    raise ValueError(f"up block type {up_block_type!r} is not supported; use one of {UP_BLOCK_TYPES}")


__all__ = [
    "DownBlock2D", "CrossAttnDownBlock2D", "AttnDownBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "AttnUpBlock2D",
    "UNetMidBlock2DCrossAttn", "UNetMidBlock2D", "DownEncoderBlock2D", "UpDecoderBlock2D", "get_down_block",
    "get_up_block", "make_resnet", "apply_freeu",
]
