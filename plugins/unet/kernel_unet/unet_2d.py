"""The unconditional image UNet of DDPM (Ho et al., arXiv:2006.11239) and its descendants (DDIM, NCSN++-style time embeddings)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel_layers.attention import AttentionMixin
from kernel_layers.blocks_2d import UNetMidBlock2D
from kernel_layers.embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps

from kernel_unet.blocks import get_down_block, get_up_block
from kernel_unet.unet_2d_condition import broadcast_timesteps


@dataclass
class UNet2DOutput(BaseOutput):
    """``sample``: ``(B, out_channels, H, W)`` model output."""

    sample: torch.Tensor = None


class UNet2DModel(ModelMixin, AttentionMixin):
    """Unconditional (optionally class-conditional) 2-D UNet with Diffusers' config keys.

    ``time_embedding_type``: ``"positional"`` (sinusoidal), ``"fourier"`` (Gaussian Fourier
    features of ``log t``; the output is divided by ``t``, score-model style) or ``"learned"``.
    """

    component_kind = "denoiser"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["ResnetBlock2D", "AttnDownBlock2D", "AttnUpBlock2D"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
    ):
        super().__init__()
        self.sample_size = sample_size
        n = len(down_block_types)
        if len(up_block_types) != n:
            raise ValueError(f"down_block_types ({n}) and up_block_types ({len(up_block_types)}) differ in length")
        if len(block_out_channels) != n:
            raise ValueError(f"block_out_channels has {len(block_out_channels)} entries for {n} down blocks")
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=(1, 1))
        if time_embedding_type == "fourier":
            self.time_proj = GaussianFourierProjection(embedding_size=block_out_channels[0], scale=16)
            timestep_input_dim = 2 * block_out_channels[0]
        elif time_embedding_type == "positional":
            self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
            timestep_input_dim = block_out_channels[0]
        elif time_embedding_type == "learned":
            if num_train_timesteps is None:
                raise ValueError("time_embedding_type='learned' needs num_train_timesteps")
            self.time_proj = nn.Embedding(num_train_timesteps, block_out_channels[0])
            timestep_input_dim = block_out_channels[0]
        else:
            raise ValueError(f"time_embedding_type={time_embedding_type!r}; use 'positional', 'fourier' or 'learned'")
        self.time_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim)

        if class_embed_type is None and num_class_embeds is not None:
            self.class_embedding = nn.Embedding(num_class_embeds, time_embed_dim)
        elif class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim)
        elif class_embed_type == "identity":
            self.class_embedding = nn.Identity()
        elif class_embed_type is None:
            self.class_embedding = None
        else:
            raise ValueError(f"class_embed_type={class_embed_type!r}; use None, 'timestep' or 'identity'")

        self.down_blocks = nn.ModuleList([])
        self.mid_block = None
        self.up_blocks = nn.ModuleList([])
        shared = dict(temb_channels=time_embed_dim, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                      resnet_groups=norm_num_groups, resnet_time_scale_shift=resnet_time_scale_shift, dropout=dropout)
        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            self.down_blocks.append(get_down_block(
                block_type, num_layers=layers_per_block, in_channels=input_channel, out_channels=output_channel,
                add_downsample=i < n - 1, downsample_padding=downsample_padding, downsample_type=downsample_type,
                attention_head_dim=attention_head_dim if attention_head_dim is not None else output_channel, **shared))

        if mid_block_type is not None:
            if mid_block_type != "UNetMidBlock2D":
                raise ValueError(f"mid_block_type={mid_block_type!r}; UNet2DModel takes 'UNetMidBlock2D' or None")
            self.mid_block = UNetMidBlock2D(
                in_channels=block_out_channels[-1], temb_channels=time_embed_dim, dropout=dropout, resnet_eps=norm_eps,
                resnet_act_fn=act_fn, output_scale_factor=mid_block_scale_factor,
                resnet_time_scale_shift=resnet_time_scale_shift,
                attention_head_dim=attention_head_dim if attention_head_dim is not None else block_out_channels[-1],
                resnet_groups=norm_num_groups, attn_groups=attn_norm_num_groups, add_attention=add_attention)

        rev = list(reversed(block_out_channels))
        output_channel = rev[0]
        for i, block_type in enumerate(up_block_types):
            prev_output_channel, output_channel = output_channel, rev[i]
            self.up_blocks.append(get_up_block(
                block_type, num_layers=layers_per_block + 1, in_channels=rev[min(i + 1, n - 1)],
                out_channels=output_channel, prev_output_channel=prev_output_channel, add_upsample=i < n - 1,
                upsample_type=upsample_type, resolution_idx=i,
                attention_head_dim=attention_head_dim if attention_head_dim is not None else output_channel, **shared))

        groups_out = norm_num_groups if norm_num_groups is not None else min(block_out_channels[0] // 4, 32)
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=groups_out, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                class_labels: torch.Tensor | None = None, return_dict: bool = True):
        if sample.ndim != 4:
            raise ValueError(f"sample must be (batch, channels, height, width), got shape {tuple(sample.shape)}")
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        if isinstance(timestep, float) and self.config.time_embedding_type != "fourier":
            timestep = int(timestep)  # Diffusers reads Python timesteps as integers here
        timesteps = broadcast_timesteps(timestep, sample.shape[0], sample.device)
        dtype = self.time_embedding.linear_1.weight.dtype
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=dtype))

        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels are required: this UNet has a class embedding")
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels)
            emb = emb + self.class_embedding(class_labels).to(dtype=dtype)
        elif class_labels is not None:
            raise ValueError("class_labels were given but this UNet has no class embedding")

        sample = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            sample, res = block(hidden_states=sample, temb=emb)
            skips += res
        if self.mid_block is not None:
            sample = self.mid_block(sample, emb)
        for block in self.up_blocks:
            count = len(block.resnets)
            res, skips = skips[-count:], skips[:-count]
            sample = block(sample, res, emb)
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))

        if self.config.time_embedding_type == "fourier":
            sample = sample / timesteps.reshape(sample.shape[0], *([1] * (sample.ndim - 1)))
        if not return_dict:
            return (sample,)
        return UNet2DOutput(sample=sample)
