"""The text-conditioned UNet of latent diffusion (Rombach et al., arXiv:2112.10752): SD 1.x/2.x, SDXL and kin.

Noisy latents ``(B, in_channels, H, W)``, a timestep and text tokens ``(B, S, cross_attention_dim)``
go in; the predicted noise / velocity ``(B, out_channels, H, W)`` comes out.  The timestep
embedding is summed with optional class, SDXL "text_time" (pooled text + size/crop ids,
Podell et al., arXiv:2307.01952) or image embeddings and fed to every ResNet.

Timesteps may be Python numbers, 0-d or 1-d tensors; they are broadcast to the batch without
reading values back to the host, so the forward pass never synchronizes with the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel_layers.activations import get_activation
from kernel_layers.attention import AttentionMixin
from kernel_layers.embeddings import (
    GaussianFourierProjection,
    ImageHintTimeEmbedding,
    ImageProjection,
    ImageTimeEmbedding,
    TextImageProjection,
    TextImageTimeEmbedding,
    TimestepEmbedding,
    Timesteps,
)
from kernel_layers.transformer_2d import mask_to_bias

from kernel_unet.blocks import MID_BLOCK_TYPES, UNetMidBlock2D, UNetMidBlock2DCrossAttn, get_down_block, get_up_block
from kernel_unet.simple_blocks import UNetMidBlock2DSimpleCrossAttn


@dataclass
class UNet2DConditionOutput(BaseOutput):
    """``sample``: ``(B, out_channels, H, W)`` model output."""

    sample: torch.Tensor = None


def broadcast_timesteps(timestep, batch: int, device: torch.device) -> torch.Tensor:
    """A ``(batch,)`` tensor of timesteps from a number, a 0-d or a 1-d tensor, without a host sync."""
    if isinstance(timestep, bool) or not isinstance(timestep, (int, float, torch.Tensor)):
        raise TypeError(f"timestep must be a number or a tensor, got {type(timestep).__name__}")
    if not isinstance(timestep, torch.Tensor):
        dtype = torch.float32 if isinstance(timestep, float) else torch.int64
        return torch.full((batch,), timestep, dtype=dtype, device=device)
    if timestep.ndim > 1:
        raise ValueError(f"timestep tensor must be 0-d or 1-d, got shape {tuple(timestep.shape)}")
    if timestep.ndim == 1 and timestep.shape[0] not in (1, batch):
        raise ValueError(f"timestep has {timestep.shape[0]} entries for a batch of {batch}; give 1 or {batch}")
    return timestep.reshape(-1).to(device).expand(batch)


def _as_list(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries but there are {n} down blocks")
        return list(value)
    return [value] * n


class UNet2DConditionModel(ModelMixin, AttentionMixin):
    """Conditional 2-D UNet with Diffusers' config keys (see the module docstring)."""

    component_kind = "denoiser"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    _repeated_blocks = ["BasicTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                             "DownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        only_cross_attention: bool | tuple[bool] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int] = 1280,
        transformer_layers_per_block: int | tuple[int] | tuple[tuple] = 1,
        reverse_transformer_layers_per_block: tuple[tuple[int]] | None = None,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int] = 8,
        num_attention_heads: int | tuple[int] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        self.sample_size = sample_size
        if num_attention_heads is not None:
            raise ValueError("num_attention_heads cannot be set on UNet2DConditionModel: Diffusers configs give the "
                             "head count as attention_head_dim (a historical naming); set attention_head_dim")
        n = len(down_block_types)
        if len(up_block_types) != n:
            raise ValueError(f"down_block_types ({n}) and up_block_types ({len(up_block_types)}) differ in length")
        if len(block_out_channels) != n:
            raise ValueError(f"block_out_channels has {len(block_out_channels)} entries for {n} down blocks")
        if mid_block_type not in MID_BLOCK_TYPES:
            raise ValueError(f"mid_block_type={mid_block_type!r} is not supported; use one of {MID_BLOCK_TYPES}")
        if isinstance(transformer_layers_per_block, (list, tuple)) and reverse_transformer_layers_per_block is None:
            if any(isinstance(x, (list, tuple)) for x in transformer_layers_per_block):
                raise ValueError("per-layer transformer_layers_per_block needs reverse_transformer_layers_per_block")

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=conv_in_kernel,
                                 padding=(conv_in_kernel - 1) // 2)

        # time embedding
        if time_embedding_type == "fourier":
            time_embed_dim = time_embedding_dim or block_out_channels[0] * 2
            if time_embed_dim % 2:
                raise ValueError(f"time_embedding_dim must be even for fourier embeddings, got {time_embed_dim}")
            self.time_proj = GaussianFourierProjection(time_embed_dim // 2, set_W_to_weight=False, log=False,
                                                       flip_sin_to_cos=flip_sin_to_cos)
            timestep_input_dim = time_embed_dim
        elif time_embedding_type == "positional":
            time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
            self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
            timestep_input_dim = block_out_channels[0]
        else:
            raise ValueError(f"time_embedding_type={time_embedding_type!r}; use 'positional' or 'fourier'")
        self.time_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=act_fn,
                                                post_act_fn=timestep_post_act, cond_proj_dim=time_cond_proj_dim)

        # encoder hidden-state projection
        if encoder_hid_dim_type is None and encoder_hid_dim is not None:
            encoder_hid_dim_type = "text_proj"
            self.register_to_config(encoder_hid_dim_type=encoder_hid_dim_type)
        if encoder_hid_dim_type is not None and encoder_hid_dim is None:
            raise ValueError(f"encoder_hid_dim_type={encoder_hid_dim_type!r} needs encoder_hid_dim")
        if encoder_hid_dim_type is None:
            self.encoder_hid_proj = None
        elif encoder_hid_dim_type == "text_proj":
            self.encoder_hid_proj = nn.Linear(encoder_hid_dim, cross_attention_dim)
        elif encoder_hid_dim_type == "text_image_proj":
            self.encoder_hid_proj = TextImageProjection(text_embed_dim=encoder_hid_dim, image_embed_dim=cross_attention_dim,
                                                        cross_attention_dim=cross_attention_dim)
        elif encoder_hid_dim_type == "image_proj":
            self.encoder_hid_proj = ImageProjection(image_embed_dim=encoder_hid_dim, cross_attention_dim=cross_attention_dim)
        else:
            raise ValueError(f"encoder_hid_dim_type={encoder_hid_dim_type!r}; use None, 'text_proj', "
                             "'text_image_proj' or 'image_proj'")

        # class embedding
        if class_embed_type is None and num_class_embeds is not None:
            self.class_embedding = nn.Embedding(num_class_embeds, time_embed_dim)
        elif class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=act_fn)
        elif class_embed_type == "identity":
            self.class_embedding = nn.Identity()
        elif class_embed_type in ("projection", "simple_projection"):
            if projection_class_embeddings_input_dim is None:
                raise ValueError(f"class_embed_type={class_embed_type!r} needs projection_class_embeddings_input_dim")
            self.class_embedding = (TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
                                    if class_embed_type == "projection"
                                    else nn.Linear(projection_class_embeddings_input_dim, time_embed_dim))
        elif class_embed_type is None:
            self.class_embedding = None
        else:
            raise ValueError(f"class_embed_type={class_embed_type!r}; use None, 'timestep', 'identity', "
                             "'projection' or 'simple_projection'")

        # additional embedding
        if addition_embed_type == "text_time":
            if addition_time_embed_dim is None or projection_class_embeddings_input_dim is None:
                raise ValueError("addition_embed_type='text_time' needs addition_time_embed_dim and "
                                 "projection_class_embeddings_input_dim")
            self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
        elif addition_embed_type == "text_image":
            self.add_embedding = TextImageTimeEmbedding(text_embed_dim=cross_attention_dim,
                                                        image_embed_dim=cross_attention_dim, time_embed_dim=time_embed_dim)
        elif addition_embed_type == "image":
            self.add_embedding = ImageTimeEmbedding(image_embed_dim=encoder_hid_dim, time_embed_dim=time_embed_dim)
        elif addition_embed_type == "image_hint":
            self.add_embedding = ImageHintTimeEmbedding(image_embed_dim=encoder_hid_dim, time_embed_dim=time_embed_dim)
        elif addition_embed_type is not None:
            raise ValueError(f"addition_embed_type={addition_embed_type!r}; use None, 'text_time', 'text_image', "
                             "'image' or 'image_hint'")
        self.time_embed_act = get_activation(time_embedding_act_fn) if time_embedding_act_fn is not None else None

        # stages
        self.down_blocks = nn.ModuleList([])
        self.up_blocks = nn.ModuleList([])
        if isinstance(only_cross_attention, bool):
            if mid_block_only_cross_attention is None:
                mid_block_only_cross_attention = only_cross_attention
        only_cross = _as_list(only_cross_attention, n, "only_cross_attention")
        heads = _as_list(attention_head_dim, n, "attention_head_dim")
        cross_dims = _as_list(cross_attention_dim, n, "cross_attention_dim")
        layers = _as_list(layers_per_block, n, "layers_per_block")
        tlayers = _as_list(transformer_layers_per_block, n, "transformer_layers_per_block")
        blocks_temb = time_embed_dim * 2 if class_embeddings_concat else time_embed_dim
        shared = dict(temb_channels=blocks_temb, resnet_eps=norm_eps, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                      dual_cross_attention=dual_cross_attention, use_linear_projection=use_linear_projection,
                      upcast_attention=upcast_attention, resnet_time_scale_shift=resnet_time_scale_shift,
                      attention_type=attention_type, dropout=dropout, resnet_skip_time_act=resnet_skip_time_act,
                      resnet_out_scale_factor=resnet_out_scale_factor, cross_attention_norm=cross_attention_norm)

        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            self.down_blocks.append(get_down_block(
                block_type, num_layers=layers[i], transformer_layers_per_block=tlayers[i], in_channels=input_channel,
                out_channels=output_channel, add_downsample=i < n - 1, cross_attention_dim=cross_dims[i],
                num_attention_heads=heads[i], downsample_padding=downsample_padding, only_cross_attention=only_cross[i],
                attention_head_dim=heads[i] if heads[i] is not None else output_channel, **shared))

        if mid_block_type == "UNetMidBlock2DCrossAttn":
            self.mid_block = UNetMidBlock2DCrossAttn(
                transformer_layers_per_block=tlayers[-1], in_channels=block_out_channels[-1], temb_channels=blocks_temb,
                dropout=dropout, resnet_eps=norm_eps, resnet_act_fn=act_fn, output_scale_factor=mid_block_scale_factor,
                resnet_time_scale_shift=resnet_time_scale_shift, cross_attention_dim=cross_dims[-1],
                num_attention_heads=heads[-1], resnet_groups=norm_num_groups, dual_cross_attention=dual_cross_attention,
                use_linear_projection=use_linear_projection, upcast_attention=upcast_attention,
                attention_type=attention_type)
        elif mid_block_type == "UNetMidBlock2D":
            self.mid_block = UNetMidBlock2D(
                in_channels=block_out_channels[-1], temb_channels=blocks_temb, dropout=dropout, num_layers=0,
                resnet_eps=norm_eps, resnet_act_fn=act_fn, output_scale_factor=mid_block_scale_factor,
                resnet_groups=norm_num_groups, resnet_time_scale_shift=resnet_time_scale_shift, add_attention=False)
        elif mid_block_type == "UNetMidBlock2DSimpleCrossAttn":
            self.mid_block = UNetMidBlock2DSimpleCrossAttn(
                in_channels=block_out_channels[-1], temb_channels=blocks_temb, dropout=dropout, resnet_eps=norm_eps,
                resnet_act_fn=act_fn, output_scale_factor=mid_block_scale_factor, cross_attention_dim=cross_dims[-1],
                attention_head_dim=heads[-1], resnet_groups=norm_num_groups,
                resnet_time_scale_shift=resnet_time_scale_shift, skip_time_act=resnet_skip_time_act,
                only_cross_attention=bool(mid_block_only_cross_attention), cross_attention_norm=cross_attention_norm)
        else:
            self.mid_block = None

        self.num_upsamplers = 0
        rev_channels = list(reversed(block_out_channels))
        rev_heads, rev_layers, rev_cross = heads[::-1], layers[::-1], cross_dims[::-1]
        rev_tlayers = (list(reversed(tlayers)) if reverse_transformer_layers_per_block is None
                       else list(reverse_transformer_layers_per_block))
        rev_only_cross = only_cross[::-1]
        output_channel = rev_channels[0]
        for i, block_type in enumerate(up_block_types):
            is_final = i == n - 1
            prev_output_channel, output_channel = output_channel, rev_channels[i]
            input_channel = rev_channels[min(i + 1, n - 1)]
            if not is_final:
                self.num_upsamplers += 1
            self.up_blocks.append(get_up_block(
                block_type, num_layers=rev_layers[i] + 1, transformer_layers_per_block=rev_tlayers[i],
                in_channels=input_channel, out_channels=output_channel, prev_output_channel=prev_output_channel,
                add_upsample=not is_final, resolution_idx=i, cross_attention_dim=rev_cross[i],
                num_attention_heads=rev_heads[i], only_cross_attention=rev_only_cross[i],
                attention_head_dim=rev_heads[i] if rev_heads[i] is not None else output_channel, **shared))

        if norm_num_groups is not None:
            self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=norm_eps)
            self.conv_act = get_activation(act_fn)
        else:
            self.conv_norm_out = self.conv_act = None
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=conv_out_kernel,
                                  padding=(conv_out_kernel - 1) // 2)

    # ------------------------------------------------------------------ switches
    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU (Si et al., arXiv:2309.11497): backbone factors ``b1, b2``, skip factors ``s1, s2``."""
        for block in self.up_blocks:
            block.s1, block.s2, block.b1, block.b2 = s1, s2, b1, b2

    def disable_freeu(self) -> None:
        for block in self.up_blocks:
            for k in ("s1", "s2", "b1", "b2"):
                setattr(block, k, None)

    # ------------------------------------------------------------------ embeddings
    def _time_embedding(self, sample, timestep, timestep_cond, class_labels, encoder_hidden_states, added_cond_kwargs):
        timesteps = broadcast_timesteps(timestep, sample.shape[0], sample.device)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype), timestep_cond)

        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels are required: this UNet has a class embedding")
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels).to(dtype=sample.dtype)
            class_emb = self.class_embedding(class_labels).to(dtype=sample.dtype)
            emb = torch.cat([emb, class_emb], dim=-1) if self.config.class_embeddings_concat else emb + class_emb

        kind = self.config.addition_embed_type
        hint = None
        if kind is not None:
            cond = added_cond_kwargs or {}

            def need(*names: str):
                missing = [k for k in names if k not in cond]
                if missing:
                    raise ValueError(f"added_cond_kwargs must contain {missing} (addition_embed_type={kind!r})")
                return [cond[k] for k in names]

            if kind == "text_time":
                text_embeds, time_ids = need("text_embeds", "time_ids")
                time_embeds = self.add_time_proj(time_ids.flatten()).reshape(text_embeds.shape[0], -1)
                aug = self.add_embedding(torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype))
            elif kind == "text_image":
                (image_embeds,) = need("image_embeds")
                aug = self.add_embedding(cond.get("text_embeds", encoder_hidden_states), image_embeds)
            elif kind == "image":
                (image_embeds,) = need("image_embeds")
                aug = self.add_embedding(image_embeds)
            else:  # image_hint
                image_embeds, hint_image = need("image_embeds", "hint")
                aug, hint = self.add_embedding(image_embeds, hint_image)
            emb = emb + aug
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        return emb, hint

    def _project_encoder_states(self, encoder_hidden_states, added_cond_kwargs):
        kind = self.config.encoder_hid_dim_type
        if self.encoder_hid_proj is None or kind is None:
            return encoder_hidden_states
        if kind == "text_proj":
            return self.encoder_hid_proj(encoder_hidden_states)
        cond = added_cond_kwargs or {}
        if "image_embeds" not in cond:
            raise ValueError(f"added_cond_kwargs must contain 'image_embeds' (encoder_hid_dim_type={kind!r})")
        if kind == "text_image_proj":
            return self.encoder_hid_proj(encoder_hidden_states, cond["image_embeds"])
        if kind == "image_proj":
            return self.encoder_hid_proj(cond["image_embeds"])
        # Adapters (IP-Adapter) may install their own projection with another type name.
        text_proj = getattr(self, "text_encoder_hid_proj", None)
        if text_proj is not None:
            encoder_hidden_states = text_proj(encoder_hidden_states)
        return encoder_hidden_states, self.encoder_hid_proj(cond["image_embeds"])

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """Predict the model output for ``sample`` at ``timestep`` given ``encoder_hidden_states``.

        ``attention_mask`` / ``encoder_attention_mask`` are ``(B, tokens)`` keep-masks (1 keep,
        0 drop) for the self- / cross-attention keys.  ControlNet residuals are added to the
        skips (``down_block_additional_residuals``) and the mid-block output; T2I-Adapter
        residuals (``down_intrablock_additional_residuals``) inside the down stages.
        """
        if sample.ndim != 4:
            raise ValueError(f"sample must be (batch, channels, height, width), got shape {tuple(sample.shape)}")
        up_factor = 2**self.num_upsamplers
        forward_upsample_size = any(dim % up_factor != 0 for dim in sample.shape[-2:])
        attention_mask = mask_to_bias(attention_mask, sample.dtype)
        encoder_attention_mask = mask_to_bias(encoder_attention_mask, sample.dtype)

        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb, hint = self._time_embedding(sample, timestep, timestep_cond, class_labels, encoder_hidden_states,
                                         added_cond_kwargs)
        if hint is not None:
            sample = torch.cat([sample, hint], dim=1)
        encoder_hidden_states = self._project_encoder_states(encoder_hidden_states, added_cond_kwargs)
        sample = self.conv_in(sample)

        is_controlnet = mid_block_additional_residual is not None and down_block_additional_residuals is not None
        intrablock = list(down_intrablock_additional_residuals) if down_intrablock_additional_residuals is not None else None
        if intrablock is None and mid_block_additional_residual is None and down_block_additional_residuals is not None:
            intrablock = list(down_block_additional_residuals)  # the old way of passing T2I-Adapter residuals
        attn_kwargs = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                           cross_attention_kwargs=cross_attention_kwargs, encoder_attention_mask=encoder_attention_mask)

        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                extra = {"additional_residuals": intrablock.pop(0)} if intrablock else {}
                sample, res = block(hidden_states=sample, temb=emb, **attn_kwargs, **extra)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
                if intrablock:
                    # The residual also reaches the skip when the block's output is that skip (no downsampler).
                    shared = res[-1] is sample
                    sample = sample + intrablock.pop(0)
                    if shared:
                        res = res[:-1] + (sample,)
            skips += res

        if is_controlnet:
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))

        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(sample, emb, **attn_kwargs)
            else:
                sample = self.mid_block(sample, emb)
            if intrablock and sample.shape == intrablock[0].shape:
                sample = sample + intrablock.pop(0)
        if is_controlnet:
            sample = sample + mid_block_additional_residual

        return up_path(self, sample, emb, skips, attn_kwargs, forward_upsample_size, return_dict)


def up_path(unet, sample, emb, skips: tuple, attn_kwargs: dict, forward_upsample_size: bool, return_dict: bool):
    """The decoder half of a conditional UNet: each up block takes its skip connections (and, with cross
    attention, ``attn_kwargs``), then the output norm, activation and convolution."""
    upsample_size = None
    for i, block in enumerate(unet.up_blocks):
        count = len(block.resnets)
        res, skips = skips[-count:], skips[:-count]
        if i < len(unet.up_blocks) - 1 and forward_upsample_size:
            upsample_size = skips[-1].shape[2:]
        if getattr(block, "has_cross_attention", False):
            sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                           upsample_size=upsample_size, **attn_kwargs)
        else:
            sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)

    if unet.conv_norm_out is not None:
        sample = unet.conv_act(unet.conv_norm_out(sample))
    sample = unet.conv_out(sample)
    if not return_dict:
        return (sample,)
    return UNet2DConditionOutput(sample=sample)
