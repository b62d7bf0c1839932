"""Resolution stages shared by VAEs and UNets: the self-attention mid-block and the encoder/decoder stages.

Cross-attention stages (``CrossAttnDownBlock2D`` ...) live with the UNet models; these are the
ones an autoencoder needs too.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from kernel_layers.attention import Attention
from kernel_layers.resnet import ResnetBlock2D, ResnetBlockCondNorm2D
from kernel_layers.sampling import Downsample2D, Upsample2D


def run_checkpointed(module: nn.Module, owner: nn.Module, *args):
    """``module(*args)``, recomputed in the backward pass when ``owner.gradient_checkpointing`` is on."""
    if torch.is_grad_enabled() and getattr(owner, "gradient_checkpointing", False):
        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)
    return module(*args)


def make_resnet(time_scale_shift: str, **kwargs) -> nn.Module:
    """``ResnetBlock2D`` or, for ``"spatial"``/``"ada_group"``, the conditioned-norm block."""
    if time_scale_shift == "group":  # the VAE decoder's name for plain group norm
        time_scale_shift = "default"
    if time_scale_shift in ("spatial", "ada_group"):
        kwargs.pop("pre_norm", None)
        return ResnetBlockCondNorm2D(time_embedding_norm=time_scale_shift, **kwargs)
    return ResnetBlock2D(time_embedding_norm=time_scale_shift, **kwargs)


def spatial_self_attention(channels: int, head_dim: int, groups: int | None, eps: float, rescale: float,
                           spatial_norm_dim: int | None = None) -> Attention:
    """Single-block self-attention over a feature map, with group norm and residual (VAE / DDPM UNet style)."""
    return Attention(channels, heads=channels // head_dim, dim_head=head_dim, rescale_output_factor=rescale, eps=eps,
                     norm_num_groups=groups, spatial_norm_dim=spatial_norm_dim, residual_connection=True, bias=True,
                     upcast_softmax=True, _from_deprecated_attn_block=True)


class UNetMidBlock2D(nn.Module):
    """ResNet, then ``num_layers`` x (self-attention, ResNet) at the lowest resolution."""

    def __init__(self, in_channels: int, temb_channels: int | None, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int | None = 32, attn_groups: int | None = None, resnet_pre_norm: bool = True,
                 add_attention: bool = True, attention_head_dim: int | None = 1, output_scale_factor: float = 1.0):
        super().__init__()
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        self.add_attention = add_attention
        if attn_groups is None:
            attn_groups = resnet_groups if resnet_time_scale_shift == "default" else None
        if attention_head_dim is None:
            attention_head_dim = in_channels

        def resnet() -> nn.Module:
            return make_resnet(resnet_time_scale_shift, in_channels=in_channels, out_channels=in_channels,
                               temb_channels=temb_channels, eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                               non_linearity=resnet_act_fn, output_scale_factor=output_scale_factor,
                               pre_norm=resnet_pre_norm)

        resnets = [resnet()]
        attentions = []
        for _ in range(num_layers):
            attentions.append(spatial_self_attention(
                in_channels, attention_head_dim, attn_groups, resnet_eps, output_scale_factor,
                spatial_norm_dim=temb_channels if resnet_time_scale_shift == "spatial" else None,
            ) if add_attention else None)
            resnets.append(resnet())
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            if attn is not None:
                hidden_states = attn(hidden_states, temb=temb)
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
        return hidden_states


class DownEncoderBlock2D(nn.Module):
    """VAE encoder stage: ``num_layers`` ResNets without time embedding, then an optional stride-2 conv."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, resnet_pre_norm: bool = True, output_scale_factor: float = 1.0,
                 add_downsample: bool = True, downsample_padding: int = 1):
        super().__init__()
        self.resnets = nn.ModuleList([
            make_resnet(resnet_time_scale_shift, in_channels=in_channels if i == 0 else out_channels,
                        out_channels=out_channels, temb_channels=None, eps=resnet_eps, groups=resnet_groups,
                        dropout=dropout, non_linearity=resnet_act_fn, output_scale_factor=output_scale_factor,
                        pre_norm=resnet_pre_norm)
            for i in range(num_layers)
        ])
        self.downsamplers = nn.ModuleList([
            Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding, name="op")
        ]) if add_downsample else None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, None)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
        return hidden_states


class UpDecoderBlock2D(nn.Module):
    """VAE decoder stage: ``num_layers`` ResNets (``temb`` only for spatial norm), then an optional 2x upsample."""

    def __init__(self, in_channels: int, out_channels: int, resolution_idx: int | None = None, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 output_scale_factor: float = 1.0, add_upsample: bool = True, temb_channels: int | None = None):
        super().__init__()
        self.resnets = nn.ModuleList([
            make_resnet(resnet_time_scale_shift, in_channels=in_channels if i == 0 else out_channels,
                        out_channels=out_channels, temb_channels=temb_channels, eps=resnet_eps, groups=resnet_groups,
                        dropout=dropout, non_linearity=resnet_act_fn, output_scale_factor=output_scale_factor,
                        pre_norm=resnet_pre_norm)
            for i in range(num_layers)
        ])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) \
            if add_upsample else None
        self.resolution_idx = resolution_idx

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states)
        return hidden_states
