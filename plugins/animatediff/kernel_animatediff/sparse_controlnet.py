"""``SparseControlNetModel``: SparseCtrl's condition encoder for AnimateDiff (Guo et al., "SparseCtrl: Adding
Sparse Controls to Text-to-Video Diffusion Models", arXiv:2311.16933).

Like a ControlNet it is a copy of the UNet's encoder half that returns one residual per UNet skip and one for the
mid block, each through a zero-initialised 1x1 convolution.  What SparseCtrl changes:

* the control is *sparse*: a video ``controlnet_cond`` ``(B, C, F, H, W)`` in which only some frames hold a
  condition, and a ``conditioning_mask`` ``(B, 1, F, H, W)`` (1 on those frames) that is concatenated to it as one
  more channel (``concat_conditioning_mask``);
* the noisy latents are *not* read: the encoder starts from ``conv_in`` of zeros plus the embedded condition, so
  the residuals depend on the timestep, the text and the condition only (the paper's remedy for the encoder
  copying the noisy input into frames without a condition);
* its down stages carry motion modules, so the condition spreads along the frame axis.  These modules have no
  second attention (``temporal_double_self_attention=False``);
* the condition is embedded either by one zero-initialised 3x3 conv, on VAE latents of the condition images
  (``use_simplified_condition_embedding``, RGB SparseCtrl), or by ControlNet's small pixel encoder (scribbles).

Config keys and module names are Diffusers', so Diffusers folders load unchanged.  :meth:`from_unet` builds one
from an SD ``UNet2DConditionModel`` (the 2-D weights copied, motion modules fresh).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel_controlnet.controlnet import CHANNEL_ORDERS, ControlNetConditioningEmbedding, scale_residuals, zero_conv
from kernel_layers.attention import AttentionMixin
from kernel_layers.embeddings import TimestepEmbedding, Timesteps
from kernel_layers.transformer_2d import mask_to_bias
from kernel_unet.blocks import UNetMidBlock2DCrossAttn
from kernel_unet.unet_2d_condition import broadcast_timesteps

from kernel_animatediff.blocks import DOWN_MOTION_TYPES, CrossAttnDownBlockMotion, DownBlockMotion
from kernel_animatediff.motion_adapter import per_block
from kernel_animatediff.unet_motion import _per_frame, down_path


@dataclass
class SparseControlNetOutput(BaseOutput):
    """``down_block_res_samples``: one residual per UNet skip, ``(B * F, C_i, H_i, W_i)``, first to last;
    ``mid_block_res_sample``: ``(B * F, C_mid, H_mid, W_mid)``."""

    down_block_res_samples: tuple[torch.Tensor, ...] = None
    mid_block_res_sample: torch.Tensor = None


class SparseControlNetModel(ModelMixin, AttentionMixin):
    """SparseCtrl's encoder (see the module docstring).

    ``forward(sample (B, C, F, h, w), timestep, encoder_hidden_states, controlnet_cond (B' , C_c, F, H, W),
    conditioning_scale=1.0, conditioning_mask=(B', 1, F, H, W), guess_mode=False)`` returns per-frame residuals for
    :class:`~kernel_animatediff.unet_motion.UNetMotionModel`; ``B'`` is ``B`` or 1 (one condition for every video).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "TemporalTransformerBlock", "ResnetBlock2D"]
    _repeated_blocks = ["BasicTransformerBlock", "TemporalTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 4,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion",
                                             "CrossAttnDownBlockMotion", "DownBlockMotion"),
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        transformer_layers_per_mid_block: int | tuple[int, ...] | None = None,
        temporal_transformer_layers_per_block: int | tuple[int, ...] = 1,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        controlnet_conditioning_channel_order: str = "rgb",
        motion_max_seq_length: int = 32,
        motion_num_attention_heads: int | tuple[int, ...] = 8,
        concat_conditioning_mask: bool = True,
        use_simplified_condition_embedding: bool = True,
    ):
        super().__init__()
        n = len(down_block_types)
        if len(block_out_channels) != n:
            raise ValueError(f"block_out_channels has {len(block_out_channels)} entries for {n} down_block_types")
        wrong = [t for t in down_block_types if t not in DOWN_MOTION_TYPES]
        if wrong:
            raise ValueError(f"down_block_types has {wrong}; a SparseControlNetModel takes {list(DOWN_MOTION_TYPES)}")
        if controlnet_conditioning_channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"controlnet_conditioning_channel_order={controlnet_conditioning_channel_order!r}; "
                             f"use one of {CHANNEL_ORDERS}")
        if not isinstance(layers_per_block, int) or isinstance(cross_attention_dim, (list, tuple)) and \
                len(cross_attention_dim) != n:
            raise ValueError("SparseControlNetModel takes one int layers_per_block and one cross_attention_dim (or one "
                             f"per down block), got {layers_per_block!r} and {cross_attention_dim!r}")
        # Diffusers' configs name the head count attention_head_dim unless num_attention_heads is set.
        heads = per_block(num_attention_heads or attention_head_dim, n, "num_attention_heads")
        cross = per_block(cross_attention_dim, n, "cross_attention_dim")
        only_cross = per_block(only_cross_attention, n, "only_cross_attention")
        tlayers = per_block(transformer_layers_per_block, n, "transformer_layers_per_block")
        temporal = per_block(temporal_transformer_layers_per_block, n, "temporal_transformer_layers_per_block")
        motion_heads = per_block(motion_num_attention_heads, n, "motion_num_attention_heads")
        # read by Diffusers' pipeline as attributes
        self.use_simplified_condition_embedding = use_simplified_condition_embedding
        self.concat_conditioning_mask = concat_conditioning_mask

        first = block_out_channels[0]
        self.conv_in = nn.Conv2d(in_channels, first, kernel_size=3, padding=1)
        cond_channels = conditioning_channels + (1 if concat_conditioning_mask else 0)
        if use_simplified_condition_embedding:
            self.controlnet_cond_embedding = zero_conv(cond_channels, first, kernel_size=3)
        else:
            if not conditioning_embedding_out_channels:
                raise ValueError("use_simplified_condition_embedding=False needs conditioning_embedding_out_channels")
            self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
                first, conditioning_channels=cond_channels, block_out_channels=conditioning_embedding_out_channels)

        time_embed_dim = first * 4
        self.time_proj = Timesteps(first, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(first, time_embed_dim, act_fn=act_fn)

        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList([zero_conv(first, first)])
        out = first
        for i, kind in enumerate(down_block_types):
            inp, out = out, block_out_channels[i]
            last = i == n - 1
            common = dict(in_channels=inp, out_channels=out, temb_channels=time_embed_dim, num_layers=layers_per_block,
                          resnet_eps=norm_eps, resnet_time_scale_shift=resnet_time_scale_shift, resnet_act_fn=act_fn,
                          resnet_groups=norm_num_groups, add_downsample=not last,
                          temporal_num_attention_heads=motion_heads[i], temporal_max_seq_length=motion_max_seq_length,
                          temporal_transformer_layers_per_block=temporal[i], temporal_double_self_attention=False)
            if kind == "CrossAttnDownBlockMotion":
                block = CrossAttnDownBlockMotion(transformer_layers_per_block=tlayers[i], num_attention_heads=heads[i],
                                                 cross_attention_dim=cross[i], use_linear_projection=use_linear_projection,
                                                 only_cross_attention=only_cross[i], upcast_attention=upcast_attention,
                                                 **common)
            else:
                block = DownBlockMotion(**common)
            self.down_blocks.append(block)
            skips = layers_per_block + (0 if last else 1)
            self.controlnet_down_blocks.extend(zero_conv(out, out) for _ in range(skips))

        mid = block_out_channels[-1]
        self.controlnet_mid_block = zero_conv(mid, mid)
        if transformer_layers_per_mid_block is None:
            transformer_layers_per_mid_block = tlayers[-1] if isinstance(tlayers[-1], int) else 1
        self.mid_block = UNetMidBlock2DCrossAttn(
            in_channels=mid, temb_channels=time_embed_dim, num_layers=1,
            transformer_layers_per_block=transformer_layers_per_mid_block, resnet_eps=norm_eps,
            resnet_time_scale_shift=resnet_time_scale_shift, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
            num_attention_heads=heads[-1], output_scale_factor=mid_block_scale_factor, cross_attention_dim=cross[-1],
            use_linear_projection=use_linear_projection, upcast_attention=upcast_attention)

    # ------------------------------------------------------------------ construction from a UNet
    @classmethod
    def from_unet(cls, unet: nn.Module, controlnet_conditioning_channel_order: str = "rgb",
                  conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
                  load_weights_from_unet: bool = True, conditioning_channels: int = 3) -> "SparseControlNetModel":
        """A SparseControlNetModel shaped like ``unet``'s encoder half (an SD ``UNet2DConditionModel``), with its
        input conv, time embedding, down stages' 2-D layers and mid block copied from ``unet``; the motion modules,
        the condition embedding and the zero convolutions start fresh.  Other settings keep their defaults."""
        cfg = getattr(unet, "config", None)
        if not hasattr(unet, "down_blocks") or not hasattr(cfg, "get"):
            raise TypeError(f"from_unet takes a UNet2DConditionModel, got {type(unet).__name__}")
        types = []
        for t in cfg["down_block_types"]:
            if "CrossAttn" in t:
                types.append("CrossAttnDownBlockMotion")
            elif "Down" in t:
                types.append("DownBlockMotion")
            else:
                raise ValueError(f"from_unet: the UNet's down block {t!r} is neither a cross-attention nor a plain "
                                 "down block")
        keys = ("in_channels", "flip_sin_to_cos", "freq_shift", "only_cross_attention", "block_out_channels",
                "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn", "norm_num_groups",
                "norm_eps", "cross_attention_dim", "attention_head_dim", "num_attention_heads", "use_linear_projection",
                "upcast_attention", "resnet_time_scale_shift")
        config = {k: cfg[k] for k in keys if k in cfg}
        config["transformer_layers_per_block"] = cfg.get("transformer_layers_per_block", 1)
        model = cls(down_block_types=tuple(types), conditioning_channels=conditioning_channels,
                    conditioning_embedding_out_channels=conditioning_embedding_out_channels,
                    controlnet_conditioning_channel_order=controlnet_conditioning_channel_order, **config)
        if load_weights_from_unet:
            for name in ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block"):
                getattr(model, name).load_state_dict(getattr(unet, name).state_dict(), strict=False)
        return model

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        conditioning_mask: torch.Tensor | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ):
        """Per-frame residuals for the motion UNet (see the class docstring); ``encoder_hidden_states`` may hold
        one row per video or one per frame."""
        if sample.ndim != 5:
            raise ValueError(f"sample must be (batch, channels, frames, height, width), got shape {tuple(sample.shape)}")
        batch, _, frames, height, width = sample.shape
        if controlnet_cond.ndim != 5 or controlnet_cond.shape[2] != frames:
            raise ValueError(f"controlnet_cond must be (batch, channels, {frames} frames, height, width), got shape "
                             f"{tuple(controlnet_cond.shape)}")
        if controlnet_cond.shape[0] not in (1, batch):
            raise ValueError(f"controlnet_cond has {controlnet_cond.shape[0]} videos for a batch of {batch}; give 1 or "
                             f"{batch}")
        if self.config.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = torch.flip(controlnet_cond, dims=[1])
        if self.config.concat_conditioning_mask:
            if conditioning_mask is None:
                raise ValueError("conditioning_mask is required: this SparseControlNetModel concatenates it to "
                                 "controlnet_cond (concat_conditioning_mask=True)")
            controlnet_cond = torch.cat([controlnet_cond, conditioning_mask.to(controlnet_cond.dtype)], dim=1)

        encoder_hidden_states = _per_frame(encoder_hidden_states, batch, frames, "encoder_hidden_states")
        if attention_mask is not None:
            attention_mask = mask_to_bias(_per_frame(attention_mask, batch, frames, "attention_mask"), sample.dtype)
        timesteps = broadcast_timesteps(timestep, batch, sample.device)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype), timestep_cond)
        emb = emb.repeat_interleave(frames, dim=0)

        # The latents are not read: the input conv sees zeros (its bias), then the embedded condition is added.
        x = self.conv_in(sample.new_zeros(batch * frames, sample.shape[1], height, width))
        x = x.reshape(batch, frames, *x.shape[1:])
        c_batch, c_channels = controlnet_cond.shape[:2]
        cond = controlnet_cond.transpose(1, 2).reshape(c_batch * frames, c_channels, *controlnet_cond.shape[3:])
        cond = self.controlnet_cond_embedding(cond)
        if cond.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"the embedded controlnet_cond is {tuple(cond.shape[-2:])} but the latents are "
                             f"{tuple(x.shape[-2:])} (height x width); give the condition at the size this model's "
                             "condition embedding maps onto the latent grid")
        x = (x + cond.reshape(c_batch, frames, *cond.shape[1:])).flatten(0, 1)

        attn = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs)
        x, skips = down_path(self.down_blocks, x, emb, frames, attn)
        x = self.mid_block(x, emb, **attn)

        down = [conv(s) for s, conv in zip(skips, self.controlnet_down_blocks)]
        mid = self.controlnet_mid_block(x)
        pooled = self.config.global_pool_conditions
        down, mid = scale_residuals(down, mid, conditioning_scale, guess_mode and not pooled)
        if pooled:
            down = [d.mean(dim=(2, 3), keepdim=True) for d in down]
            mid = mid.mean(dim=(2, 3), keepdim=True)
        if not return_dict:
            return (down, mid)
        return SparseControlNetOutput(down_block_res_samples=tuple(down), mid_block_res_sample=mid)


__all__ = ["SparseControlNetModel", "SparseControlNetOutput"]
