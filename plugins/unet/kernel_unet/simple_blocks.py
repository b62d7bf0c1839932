"""UNet stages with "simple" cross-attention (unCLIP / Kandinsky 2.x / DeepFloyd IF UNets).

Instead of a spatial transformer, each ResNet is followed by one attention layer whose keys and
values are the conditioning tokens (projected by ``add_k_proj`` / ``add_v_proj``) followed by the
feature map's own pixels (Nichol et al., GLIDE, arXiv:2112.10741, Sec. 2.3; Ramesh et al., unCLIP).
Resampling is done by ResNets with ``down=True`` / ``up=True`` (BigGAN-style, as in improved DDPM).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernel_layers.attention import Attention, AttnProcessor
from kernel_layers.blocks_2d import run_checkpointed
from kernel_layers.resnet import ResnetBlock2D

SIMPLE_DOWN_TYPES = ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D")
SIMPLE_UP_TYPES = ("ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D")
SIMPLE_MID_TYPE = "UNetMidBlock2DSimpleCrossAttn"


class AttnAddedKVProcessor(AttnProcessor):
    """Self-attention over a ``(B, C, H, W)`` map whose keys/values are ``[added tokens; pixels]``
    (only the added tokens with ``only_cross_attention``), plus the residual."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs: Any):
        residual = hidden_states
        x = hidden_states.flatten(2).transpose(1, 2)  # (B, HW, C)
        if encoder_hidden_states is None:
            context = x
        elif attn.norm_cross is not None:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        else:
            context = encoder_hidden_states
        x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        query = attn.split_heads(attn.to_q(x))
        key, value = attn.split_heads(attn.add_k_proj(context)), attn.split_heads(attn.add_v_proj(context))
        if not attn.only_cross_attention:
            key = torch.cat([key, attn.split_heads(attn.to_k(x))], dim=2)
            value = torch.cat([value, attn.split_heads(attn.to_v(x))], dim=2)
        if attention_mask is not None and attention_mask.shape[-1] < key.shape[2]:
            # A mask over the added tokens: the pixels are always attended to.
            attention_mask = F.pad(attention_mask, (0, key.shape[2] - attention_mask.shape[-1]), value=0.0)
        out = attn.attend(query, key, value, attention_mask, backend=self.backend, slice_size=self.slice_size)
        out = attn.to_out[1](attn.to_out[0](attn.merge_heads(out)))
        return out.transpose(1, 2).reshape(residual.shape) + residual


# Diffusers' names for the same processor.
AttnAddedKVProcessor2_0 = AttnAddedKVProcessor


class AddedKVAttention(Attention):
    """An :class:`Attention` that always runs the added-key/value computation: the model-wide switches
    (backend, slicing, xformers, default processor) hand it plain processors, which are converted."""

    def set_processor(self, processor: Any) -> None:
        if isinstance(processor, AttnProcessor) and not isinstance(processor, AttnAddedKVProcessor):
            processor = AttnAddedKVProcessor(backend=processor.backend, slice_size=processor.slice_size)
        super().set_processor(processor)


def _resnet(in_channels: int, out_channels: int, common: dict, **extra) -> ResnetBlock2D:
    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=common["temb_channels"],
                         eps=common["resnet_eps"], groups=common["resnet_groups"], dropout=common["dropout"],
                         time_embedding_norm=common["resnet_time_scale_shift"], non_linearity=common["resnet_act_fn"],
                         output_scale_factor=common["output_scale_factor"], skip_time_act=common["skip_time_act"],
                         **extra)


def _attention(channels: int, head_dim: int, cross_attention_dim: int, groups: int, only_cross: bool,
               cross_norm: str | None) -> AddedKVAttention:
    return AddedKVAttention(query_dim=channels, cross_attention_dim=channels, heads=channels // head_dim,
                            dim_head=head_dim, added_kv_proj_dim=cross_attention_dim, norm_num_groups=groups, bias=True,
                            upcast_softmax=True, only_cross_attention=only_cross, cross_attention_norm=cross_norm)


def _common(temb_channels, dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups,
            output_scale_factor, skip_time_act) -> dict:
    return dict(temb_channels=temb_channels, dropout=dropout, resnet_eps=resnet_eps,
                resnet_time_scale_shift=resnet_time_scale_shift, resnet_act_fn=resnet_act_fn,
                resnet_groups=resnet_groups, output_scale_factor=output_scale_factor, skip_time_act=skip_time_act)


def _cross_mask(attention_mask, encoder_attention_mask, encoder_hidden_states):
    """unCLIP passes its text mask as ``attention_mask``; otherwise the encoder mask applies to the added tokens."""
    if attention_mask is not None:
        return attention_mask
    return encoder_attention_mask if encoder_hidden_states is not None else None


class _SimpleStage(nn.Module):
    has_cross_attention = False

    def _attend(self, i: int, hidden_states, encoder_hidden_states, mask, cross_attention_kwargs):
        kwargs = {k: v for k, v in (cross_attention_kwargs or {}).items() if k != "scale"}
        return self.attentions[i](hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=mask,
                                  **kwargs)


class ResnetDownsampleBlock2D(_SimpleStage):
    """ResNets, then a downsampling ResNet (``down=True``) instead of a strided convolution."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, output_scale_factor: float = 1.0,
                 add_downsample: bool = True, skip_time_act: bool = False, **_: Any):
        super().__init__()
        c = _common(temb_channels, dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups,
                    output_scale_factor, skip_time_act)
        self.resnets = nn.ModuleList([_resnet(in_channels if i == 0 else out_channels, out_channels, c)
                                      for i in range(num_layers)])
        self.downsamplers = nn.ModuleList([_resnet(out_channels, out_channels, c, down=True)]) if add_downsample else None
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, **_: Any):
        skips = ()
        for resnet in self.resnets:
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states, temb)
            skips += (hidden_states,)
        return hidden_states, skips


class SimpleCrossAttnDownBlock2D(ResnetDownsampleBlock2D):
    """:class:`ResnetDownsampleBlock2D` with an added-key/value attention after every ResNet."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int = 1,
                 resnet_groups: int = 32, attention_head_dim: int = 1, cross_attention_dim: int = 1280,
                 only_cross_attention: bool = False, cross_attention_norm: str | None = None, **kwargs: Any):
        super().__init__(in_channels, out_channels, temb_channels, num_layers=num_layers, resnet_groups=resnet_groups,
                         **kwargs)
        self.attention_head_dim, self.num_heads = attention_head_dim, out_channels // attention_head_dim
        self.attentions = nn.ModuleList([
            _attention(out_channels, attention_head_dim, cross_attention_dim, resnet_groups, only_cross_attention,
                       cross_attention_norm) for _ in range(num_layers)])

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                encoder_attention_mask: torch.Tensor | None = None, **_: Any):
        mask = _cross_mask(attention_mask, encoder_attention_mask, encoder_hidden_states)
        skips = ()
        for i, resnet in enumerate(self.resnets):
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
            hidden_states = self._attend(i, hidden_states, encoder_hidden_states, mask, cross_attention_kwargs)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states, temb)
            skips += (hidden_states,)
        return hidden_states, skips


class ResnetUpsampleBlock2D(_SimpleStage):
    """ResNets over ``[hidden; skip]``, then an upsampling ResNet (``up=True``)."""

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 resolution_idx: int | None = None, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, output_scale_factor: float = 1.0, add_upsample: bool = True,
                 skip_time_act: bool = False, **_: Any):
        super().__init__()
        c = _common(temb_channels, dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups,
                    output_scale_factor, skip_time_act)
        self.resnets = nn.ModuleList([
            _resnet((prev_output_channel if i == 0 else out_channels)
                    + (in_channels if i == num_layers - 1 else out_channels), out_channels, c)
            for i in range(num_layers)])
        self.upsamplers = nn.ModuleList([_resnet(out_channels, out_channels, c, up=True)]) if add_upsample else None
        self.resolution_idx = resolution_idx
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None, upsample_size=None, **_: Any):
        for resnet in self.resnets:
            hidden_states = torch.cat([hidden_states, res_hidden_states_tuple[-1]], dim=1)
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, temb)
        return hidden_states


class SimpleCrossAttnUpBlock2D(ResnetUpsampleBlock2D):
    """:class:`ResnetUpsampleBlock2D` with an added-key/value attention after every ResNet."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 num_layers: int = 1, resnet_groups: int = 32, attention_head_dim: int = 1,
                 cross_attention_dim: int = 1280, only_cross_attention: bool = False,
                 cross_attention_norm: str | None = None, **kwargs: Any):
        super().__init__(in_channels, prev_output_channel, out_channels, temb_channels, num_layers=num_layers,
                         resnet_groups=resnet_groups, **kwargs)
        self.attention_head_dim, self.num_heads = attention_head_dim, out_channels // attention_head_dim
        self.attentions = nn.ModuleList([
            _attention(out_channels, attention_head_dim, cross_attention_dim, resnet_groups, only_cross_attention,
                       cross_attention_norm) for _ in range(num_layers)])

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                upsample_size=None, attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                encoder_attention_mask: torch.Tensor | None = None, **_: Any):
        mask = _cross_mask(attention_mask, encoder_attention_mask, encoder_hidden_states)
        for i, resnet in enumerate(self.resnets):
            hidden_states = torch.cat([hidden_states, res_hidden_states_tuple[-1]], dim=1)
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
            hidden_states = self._attend(i, hidden_states, encoder_hidden_states, mask, cross_attention_kwargs)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, temb)
        return hidden_states


class UNetMidBlock2DSimpleCrossAttn(_SimpleStage):
    """ResNet, then ``num_layers`` x (added-key/value attention, ResNet)."""

    has_cross_attention = True

    def __init__(self, in_channels: int, temb_channels: int, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int | None = 32, attention_head_dim: int = 1, output_scale_factor: float = 1.0,
                 cross_attention_dim: int = 1280, skip_time_act: bool = False, only_cross_attention: bool = False,
                 cross_attention_norm: str | None = None):
        super().__init__()
        groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        c = _common(temb_channels, dropout, resnet_eps, resnet_time_scale_shift, resnet_act_fn, groups,
                    output_scale_factor, skip_time_act)
        self.attention_head_dim, self.num_heads = attention_head_dim, in_channels // attention_head_dim
        self.resnets = nn.ModuleList([_resnet(in_channels, in_channels, c) for _ in range(num_layers + 1)])
        self.attentions = nn.ModuleList([
            _attention(in_channels, attention_head_dim, cross_attention_dim, groups, only_cross_attention,
                       cross_attention_norm) for _ in range(num_layers)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _cross_mask(attention_mask, encoder_attention_mask, encoder_hidden_states)
        hidden_states = self.resnets[0](hidden_states, temb)
        for i, resnet in enumerate(self.resnets[1:]):
            hidden_states = self._attend(i, hidden_states, encoder_hidden_states, mask, cross_attention_kwargs)
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
        return hidden_states


def get_simple_block(kind: str, *, up: bool, num_layers: int, in_channels: int, out_channels: int,
                     temb_channels: int, resnet_eps: float, resnet_act_fn: str, resnet_groups: int | None,
                     resnet_time_scale_shift: str, dropout: float, cross_attention_dim: int | None,
                     attention_head_dim: int, only_cross_attention: bool, add_resample: bool,
                     prev_output_channel: int | None = None, resolution_idx: int | None = None,
                     skip_time_act: bool = False, output_scale_factor: float = 1.0,
                     cross_attention_norm: str | None = None) -> nn.Module:
    """Build one of the simple stages from its Diffusers class name."""
    if kind.startswith("SimpleCrossAttn") and cross_attention_dim is None:
        raise ValueError(f"{kind} needs cross_attention_dim")
    common = dict(num_layers=num_layers, in_channels=in_channels, out_channels=out_channels,
                  temb_channels=temb_channels, dropout=dropout, resnet_eps=resnet_eps, resnet_act_fn=resnet_act_fn,
                  resnet_groups=resnet_groups, resnet_time_scale_shift=resnet_time_scale_shift,
                  skip_time_act=skip_time_act, output_scale_factor=output_scale_factor)
    attn = dict(cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
                only_cross_attention=only_cross_attention, cross_attention_norm=cross_attention_norm)
    if up:
        common.update(prev_output_channel=prev_output_channel, resolution_idx=resolution_idx, add_upsample=add_resample)
        return ResnetUpsampleBlock2D(**common) if kind == "ResnetUpsampleBlock2D" else SimpleCrossAttnUpBlock2D(**common, **attn)
    common.update(add_downsample=add_resample)
    return ResnetDownsampleBlock2D(**common) if kind == "ResnetDownsampleBlock2D" else SimpleCrossAttnDownBlock2D(**common, **attn)
