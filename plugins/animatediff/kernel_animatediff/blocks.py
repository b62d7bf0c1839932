"""UNet stages with motion modules: the 2-D stages of ``kernel-unet`` plus one motion module after each layer.

Each class extends the ``kernel_unet`` stage of the same layout (its ``resnets``, ``attentions``,
``downsamplers`` / ``upsamplers`` are built by that stage) with ``motion_modules``, one
:class:`~kernel_animatediff.temporal.AnimateDiffTransformer3D` per layer, and a forward that runs the
motion module right after each layer's spatial work.  Inputs are ``(B * F, C, H, W)`` frame batches;
``num_frames`` says how to regroup them into videos.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernel_layers.blocks_2d import run_checkpointed
from kernel_unet.blocks import CrossAttnDownBlock2D, CrossAttnUpBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D

from kernel_animatediff.temporal import motion_modules

DOWN_MOTION_TYPES = ("CrossAttnDownBlockMotion", "DownBlockMotion")
UP_MOTION_TYPES = ("CrossAttnUpBlockMotion", "UpBlockMotion")


class _Temporal:
    """Builds ``self.motion_modules`` from the ``temporal_*`` arguments of Diffusers' motion stages."""

    def _add_motion(self, channels: int, num_layers: int, groups: int, temporal_num_attention_heads: int,
                    temporal_max_seq_length: int, temporal_transformer_layers_per_block,
                    temporal_cross_attention_dim: int | None, temporal_double_self_attention: bool = True) -> None:
        self.motion_modules = motion_modules(channels, num_layers, temporal_num_attention_heads,
                                             temporal_transformer_layers_per_block, groups, temporal_max_seq_length,
                                             temporal_cross_attention_dim,
                                             double_self_attention=temporal_double_self_attention)


def _split(kwargs: dict) -> dict:
    """The ``temporal_*`` arguments, removed from ``kwargs``.

    ``temporal_double_self_attention=False`` gives motion blocks without a second attention (when
    ``temporal_cross_attention_dim`` is None too), as SparseCtrl's encoder has them."""
    defaults = {"temporal_num_attention_heads": 8, "temporal_max_seq_length": 32,
                "temporal_transformer_layers_per_block": 1, "temporal_cross_attention_dim": None,
                "temporal_double_self_attention": True}
    return {n: kwargs.pop(n, d) for n, d in defaults.items()}


class DownBlockMotion(_Temporal, DownBlock2D):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int = 1,
                 resnet_groups: int = 32, **kwargs: Any):
        temporal = _split(kwargs)
        super().__init__(in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels,
                         num_layers=num_layers, resnet_groups=resnet_groups, **kwargs)
        self._add_motion(out_channels, num_layers, resnet_groups, **temporal)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, num_frames: int = 1,
                **_: Any):
        skips = ()
        for resnet, motion in zip(self.resnets, self.motion_modules):
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
            hidden_states = motion(hidden_states, num_frames=num_frames)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class CrossAttnDownBlockMotion(_Temporal, CrossAttnDownBlock2D):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int = 1,
                 resnet_groups: int = 32, **kwargs: Any):
        temporal = _split(kwargs)
        super().__init__(in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels,
                         num_layers=num_layers, resnet_groups=resnet_groups, **kwargs)
        self._add_motion(out_channels, num_layers, resnet_groups, **temporal)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                num_frames: int = 1, encoder_attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                additional_residuals: torch.Tensor | None = None):
        skips = ()
        last = len(self.resnets) - 1
        for i, (resnet, attn, motion) in enumerate(zip(self.resnets, self.attentions, self.motion_modules)):
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
                                 encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]
            hidden_states = motion(hidden_states, num_frames=num_frames)
            if i == last and additional_residuals is not None:
                hidden_states = hidden_states + additional_residuals
            skips += (hidden_states,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class UpBlockMotion(_Temporal, UpBlock2D):
    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 num_layers: int = 1, resnet_groups: int = 32, **kwargs: Any):
        temporal = _split(kwargs)
        super().__init__(in_channels=in_channels, prev_output_channel=prev_output_channel, out_channels=out_channels,
                         temb_channels=temb_channels, num_layers=num_layers, resnet_groups=resnet_groups, **kwargs)
        self._add_motion(out_channels, num_layers, resnet_groups, **temporal)

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None, upsample_size=None, num_frames: int = 1, **_: Any) -> torch.Tensor:
        for resnet, motion in zip(self.resnets, self.motion_modules):
            skip, res_hidden_states_tuple = res_hidden_states_tuple[-1], res_hidden_states_tuple[:-1]
            hidden_states, skip = self._freeu(hidden_states, skip)
            hidden_states = run_checkpointed(resnet, self, torch.cat([hidden_states, skip], dim=1), temb)
            hidden_states = motion(hidden_states, num_frames=num_frames)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states, upsample_size)
        return hidden_states


class CrossAttnUpBlockMotion(_Temporal, CrossAttnUpBlock2D):
    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 num_layers: int = 1, resnet_groups: int = 32, **kwargs: Any):
        temporal = _split(kwargs)
        super().__init__(in_channels=in_channels, out_channels=out_channels, prev_output_channel=prev_output_channel,
                         temb_channels=temb_channels, num_layers=num_layers, resnet_groups=resnet_groups, **kwargs)
        self._add_motion(out_channels, num_layers, resnet_groups, **temporal)

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None, upsample_size=None,
                attention_mask: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                num_frames: int = 1) -> torch.Tensor:
        for resnet, attn, motion in zip(self.resnets, self.attentions, self.motion_modules):
            skip, res_hidden_states_tuple = res_hidden_states_tuple[-1], res_hidden_states_tuple[:-1]
            hidden_states, skip = self._freeu(hidden_states, skip)
            hidden_states = run_checkpointed(resnet, self, torch.cat([hidden_states, skip], dim=1), temb)
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
                                 encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]
            hidden_states = motion(hidden_states, num_frames=num_frames)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states, upsample_size)
        return hidden_states


class UNetMidBlockCrossAttnMotion(_Temporal, UNetMidBlock2DCrossAttn):
    """ResNet, then ``num_layers`` x (spatial transformer, motion module, ResNet)."""

    def __init__(self, in_channels: int, temb_channels: int, num_layers: int = 1, resnet_groups: int = 32,
                 **kwargs: Any):
        temporal = _split(kwargs)
        super().__init__(in_channels=in_channels, temb_channels=temb_channels, num_layers=num_layers,
                         resnet_groups=resnet_groups, **kwargs)
        self._add_motion(in_channels, num_layers, resnet_groups, **temporal)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                encoder_attention_mask: torch.Tensor | None = None, num_frames: int = 1) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, motion, resnet in zip(self.attentions, self.motion_modules, self.resnets[1:]):
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
                                 encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]
            hidden_states = run_checkpointed(motion, self, hidden_states, None, num_frames)
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
        return hidden_states


class MotionModules(nn.Module):
    """A motion adapter's modules for one UNet stage (``motion_modules.<i>``), with no 2-D layers."""

    def __init__(self, in_channels: int, layers_per_block: int = 2, transformer_layers_per_block=8,
                 num_attention_heads: int = 8, norm_num_groups: int = 32, max_seq_length: int = 32):
        super().__init__()
        self.motion_modules = motion_modules(in_channels, layers_per_block, num_attention_heads,
                                             transformer_layers_per_block, norm_num_groups, max_seq_length)


__all__ = ["CrossAttnDownBlockMotion", "CrossAttnUpBlockMotion", "DownBlockMotion", "MotionModules",
           "UNetMidBlockCrossAttnMotion", "UpBlockMotion"]
