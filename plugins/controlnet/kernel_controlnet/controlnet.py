"""ControlNet (Zhang, Rao and Agrawala, "Adding Conditional Control to Text-to-Image Diffusion Models",
arXiv:2302.05543) for the latent-diffusion UNet of SD 1.x/2.x and SDXL.

A trainable copy of the UNet's encoder half (input conv, time/added embeddings, down stages, mid
block) sees the noisy latents plus an embedded control image ``(B, conditioning_channels, 8h, 8w)``
and returns one residual per UNet skip connection and one for the mid block.  Each residual goes
through a zero-initialised 1x1 convolution, so an untrained ControlNet leaves the UNet unchanged.
The UNet adds them (``down_block_additional_residuals``, ``mid_block_additional_residual``).

Blocks come from ``kernel-unet`` / ``kernel-layers``; module names are Diffusers' state-dict keys,
so Diffusers checkpoints load unchanged.  As in the reference, ``encoder_hid_proj`` is built (so
checkpoints that carry it load) but not applied.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel_layers.attention import AttentionMixin
from kernel_layers.embeddings import TextImageProjection, TimestepEmbedding, Timesteps
from kernel_layers.transformer_2d import mask_to_bias
from kernel_unet.blocks import UNetMidBlock2D, UNetMidBlock2DCrossAttn, get_down_block
from kernel_unet.unet_2d_condition import broadcast_timesteps

MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D")
CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass
class ControlNetOutput(BaseOutput):
    """``down_block_res_samples``: one residual per UNet skip, ``(B, C_i, H_i, W_i)``, first to last;
    ``mid_block_res_sample``: ``(B, C_mid, H_mid, W_mid)``."""

    down_block_res_samples: tuple[torch.Tensor, ...] = None
    mid_block_res_sample: torch.Tensor = None


def zero_conv(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Conv2d:
    """A convolution whose weight and bias start at zero (the paper's "zero convolution")."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=kernel_size // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def zero_module(module: nn.Module) -> nn.Module:
    """``module`` with every parameter set to zero (the paper's zero-initialised connections)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def scale_residuals(down: list[torch.Tensor], mid: torch.Tensor, scale: float, guess_mode: bool):
    """Scale the residuals by ``scale``; in guess mode also by ``10**-1 ... 10**0`` from the shallowest skip
    to the mid block, so the deep features dominate (the paper's "guess mode", section 4)."""
    if not guess_mode:
        return [d * scale for d in down], mid * scale
    scales = torch.logspace(-1, 0, len(down) + 1, device=mid.device) * scale
    return [d * s for d, s in zip(down, scales)], mid * scales[-1]


class ControlNetConditioningEmbedding(nn.Module):
    """The control-image encoder E(.) of the paper (section 3.2): a 3x3 conv, then for each further
    width a 3x3 conv and a stride-2 3x3 conv (SiLU after each), and a zero-initialised 3x3 output conv.
    ``(B, conditioning_channels, H, W)`` -> ``(B, conditioning_embedding_channels, H / 2**(n-1), W / 2**(n-1))``.
    """

    def __init__(self, conditioning_embedding_channels: int, conditioning_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (16, 32, 96, 256)):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        blocks = []
        for cin, cout in zip(block_out_channels[:-1], block_out_channels[1:]):
            blocks += [nn.Conv2d(cin, cin, kernel_size=3, padding=1),
                       nn.Conv2d(cin, cout, kernel_size=3, padding=1, stride=2)]
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = zero_conv(block_out_channels[-1], conditioning_embedding_channels, kernel_size=3)

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


def _per_block(value: Any, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries but there are {n} down blocks")
        return list(value)
    return [value] * n


class UNetControlNetBase(ModelMixin, AttentionMixin):
    """What the UNet ControlNets (:class:`ControlNetModel`, ``ControlNetUnionModel``) share: the copy of the UNet's
    encoder half with its embeddings, the control-image encoder and the zero convolutions (built by
    :meth:`_build` from the config arguments), :meth:`from_unet`, the time / class / SDXL embedding and the pass
    through the encoder half to the residuals (:meth:`_residuals`)."""

    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D"]
    _repeated_blocks = ["BasicTransformerBlock"]

    def _build(self, *, in_channels: int, conditioning_channels: int, flip_sin_to_cos: bool, freq_shift: int,
               down_block_types: tuple[str, ...], mid_block_type: str | None, only_cross_attention: Any,
               block_out_channels: tuple[int, ...], layers_per_block: int, downsample_padding: int,
               mid_block_scale_factor: float, act_fn: str, norm_num_groups: int | None, norm_eps: float,
               cross_attention_dim: int, transformer_layers_per_block: Any, encoder_hid_dim: int | None,
               encoder_hid_dim_type: str | None, attention_head_dim: Any, num_attention_heads: Any,
               use_linear_projection: bool, class_embed_type: str | None, addition_embed_type: str | None,
               addition_time_embed_dim: int | None, num_class_embeds: int | None, upcast_attention: bool,
               resnet_time_scale_shift: str, projection_class_embeddings_input_dim: int | None,
               controlnet_conditioning_channel_order: str, conditioning_embedding_out_channels: tuple[int, ...],
               **_: Any) -> None:
        n = len(down_block_types)
        if len(block_out_channels) != n:
            raise ValueError(f"block_out_channels has {len(block_out_channels)} entries for {n} down_block_types")
        if mid_block_type not in MID_BLOCK_TYPES:
            raise ValueError(f"mid_block_type={mid_block_type!r} is not supported; use one of {MID_BLOCK_TYPES}")
        if controlnet_conditioning_channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"controlnet_conditioning_channel_order={controlnet_conditioning_channel_order!r}; "
                             f"use one of {CHANNEL_ORDERS}")
        if not isinstance(layers_per_block, int) or isinstance(cross_attention_dim, (list, tuple)):
            raise ValueError(f"{type(self).__name__} takes one int layers_per_block and one int cross_attention_dim, "
                             f"got {layers_per_block!r} and {cross_attention_dim!r}")
        # Diffusers' configs name the head count attention_head_dim unless num_attention_heads is set.
        heads = _per_block(num_attention_heads or attention_head_dim, n, "num_attention_heads")
        only_cross = _per_block(only_cross_attention, n, "only_cross_attention")
        tlayers = _per_block(transformer_layers_per_block, n, "transformer_layers_per_block")

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        time_embed_dim = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn)

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
            self.encoder_hid_proj = TextImageProjection(text_embed_dim=encoder_hid_dim,
                                                        image_embed_dim=cross_attention_dim,
                                                        cross_attention_dim=cross_attention_dim)
        else:
            raise ValueError(f"encoder_hid_dim_type={encoder_hid_dim_type!r}; use None, 'text_proj' or 'text_image_proj'")

        if class_embed_type is None and num_class_embeds is not None:
            self.class_embedding = nn.Embedding(num_class_embeds, time_embed_dim)
        elif class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim)
        elif class_embed_type == "identity":
            self.class_embedding = nn.Identity()
        elif class_embed_type == "projection":
            if projection_class_embeddings_input_dim is None:
                raise ValueError("class_embed_type='projection' needs projection_class_embeddings_input_dim")
            self.class_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
        elif class_embed_type is None:
            self.class_embedding = None
        else:
            raise ValueError(f"class_embed_type={class_embed_type!r}; use None, 'timestep', 'identity' or 'projection'")

        if addition_embed_type == "text_time":
            if addition_time_embed_dim is None or projection_class_embeddings_input_dim is None:
                raise ValueError("addition_embed_type='text_time' needs addition_time_embed_dim and "
                                 "projection_class_embeddings_input_dim")
            self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
        elif addition_embed_type is not None:
            raise ValueError(f"addition_embed_type={addition_embed_type!r} is not supported; use None or "
                             "'text_time' (SDXL)")

        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            block_out_channels[0], conditioning_channels=conditioning_channels,
            block_out_channels=conditioning_embedding_out_channels)

        # Encoder half of the UNet, one zero conv per skip it produces (the input conv's output
        # first, then each ResNet/attention layer and each downsampler), and one for the mid block.
        self.down_blocks = nn.ModuleList([])
        self.controlnet_down_blocks = nn.ModuleList([zero_conv(block_out_channels[0], block_out_channels[0])])
        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            last = i == n - 1
            self.down_blocks.append(get_down_block(
                block_type, num_layers=layers_per_block, transformer_layers_per_block=tlayers[i],
                in_channels=input_channel, out_channels=output_channel, temb_channels=time_embed_dim,
                add_downsample=not last, resnet_eps=norm_eps, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                cross_attention_dim=cross_attention_dim, num_attention_heads=heads[i],
                attention_head_dim=heads[i] if heads[i] is not None else output_channel,
                downsample_padding=downsample_padding, use_linear_projection=use_linear_projection,
                only_cross_attention=only_cross[i], upcast_attention=upcast_attention,
                resnet_time_scale_shift=resnet_time_scale_shift))
            skips = layers_per_block + (0 if last else 1)
            self.controlnet_down_blocks.extend(zero_conv(output_channel, output_channel) for _ in range(skips))

        mid_channels = block_out_channels[-1]
        self.controlnet_mid_block = zero_conv(mid_channels, mid_channels)
        if mid_block_type == "UNetMidBlock2DCrossAttn":
            self.mid_block = UNetMidBlock2DCrossAttn(
                transformer_layers_per_block=tlayers[-1], in_channels=mid_channels, temb_channels=time_embed_dim,
                resnet_eps=norm_eps, resnet_act_fn=act_fn, output_scale_factor=mid_block_scale_factor,
                resnet_time_scale_shift=resnet_time_scale_shift, cross_attention_dim=cross_attention_dim,
                num_attention_heads=heads[-1], resnet_groups=norm_num_groups,
                use_linear_projection=use_linear_projection, upcast_attention=upcast_attention)
        else:
            self.mid_block = UNetMidBlock2D(
                in_channels=mid_channels, temb_channels=time_embed_dim, num_layers=0, resnet_eps=norm_eps,
                resnet_act_fn=act_fn, output_scale_factor=mid_block_scale_factor, resnet_groups=norm_num_groups,
                resnet_time_scale_shift=resnet_time_scale_shift, add_attention=False)

    # ------------------------------------------------------------------ construction from a UNet
    @classmethod
    def from_unet(cls, unet: torch.nn.Module, controlnet_conditioning_channel_order: str = "rgb",
                  conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
                  load_weights_from_unet: bool = True, conditioning_channels: int = 3, **config: Any):
        """A ControlNet shaped like ``unet``'s encoder half, its weights copied from ``unet`` (the zero
        convolutions and the control-image encoder start fresh), as the paper initialises training.  ``config``:
        further constructor arguments of the ControlNet class."""
        cfg = unet.config
        keys = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention",
                "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
                "norm_num_groups", "norm_eps", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
                "use_linear_projection", "class_embed_type", "num_class_embeds", "upcast_attention",
                "resnet_time_scale_shift", "projection_class_embeddings_input_dim", "mid_block_type",
                "transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type",
                "addition_time_embed_dim")
        takes = inspect.signature(cls.__init__).parameters
        controlnet = cls(**{k: cfg[k] for k in keys if k in cfg and k in takes},
                         controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
                         conditioning_embedding_out_channels=conditioning_embedding_out_channels,
                         conditioning_channels=conditioning_channels, **config)
        if load_weights_from_unet:
            shared = ["conv_in", "time_embedding", "down_blocks", "mid_block"]
            if controlnet.class_embedding is not None:
                shared.append("class_embedding")
            if hasattr(controlnet, "add_embedding"):
                shared.append("add_embedding")
            for name in shared:
                getattr(controlnet, name).load_state_dict(getattr(unet, name).state_dict())
        return controlnet

    # ------------------------------------------------------------------ forward pieces
    def _embedding(self, sample: torch.Tensor, timestep, timestep_cond, class_labels, added_cond_kwargs):
        """The time embedding plus the class and SDXL text-time embeddings, ``(B, 4 * block_out_channels[0])``."""
        timesteps = broadcast_timesteps(timestep, sample.shape[0], sample.device)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype), timestep_cond)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels are required: this ControlNet has a class embedding")
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels)
            emb = emb + self.class_embedding(class_labels).to(dtype=self.dtype)
        if self.config.addition_embed_type == "text_time":
            cond = added_cond_kwargs or {}
            missing = [k for k in ("text_embeds", "time_ids") if k not in cond]
            if missing:
                raise ValueError(f"added_cond_kwargs must contain {missing} (addition_embed_type='text_time')")
            text_embeds = cond["text_embeds"]
            time_embeds = self.add_time_proj(cond["time_ids"].flatten()).reshape(text_embeds.shape[0], -1)
            emb = emb + self.add_embedding(torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype))
        return emb

    def _residuals(self, sample: torch.Tensor, emb: torch.Tensor, encoder_hidden_states: torch.Tensor,
                   attention_mask: torch.Tensor | None, cross_attention_kwargs: dict[str, Any] | None):
        """``sample`` (the input conv's output plus the control) through the down stages and the mid block ->
        ``(down, mid)``: each skip and the mid block's output through its zero convolution, unscaled."""
        attn_kwargs = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                           cross_attention_kwargs=cross_attention_kwargs)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb, **attn_kwargs)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            skips += res
        if getattr(self.mid_block, "has_cross_attention", False):
            sample = self.mid_block(sample, emb, **attn_kwargs)
        else:
            sample = self.mid_block(sample, emb)
        return [conv(s) for s, conv in zip(skips, self.controlnet_down_blocks)], self.controlnet_mid_block(sample)

    def _finish(self, down: list[torch.Tensor], mid: torch.Tensor, scale: float, guess_mode: bool, return_dict: bool):
        """Scale (guess mode: 0.1 ... 1.0 from the shallowest skip), pool for ``global_pool_conditions``, wrap."""
        pooled = self.config.global_pool_conditions
        down, mid = scale_residuals(down, mid, scale, guess_mode and not pooled)
        if pooled:
            down = [d.mean(dim=(2, 3), keepdim=True) for d in down]
            mid = mid.mean(dim=(2, 3), keepdim=True)
        if not return_dict:
            return down, mid
        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)


class ControlNetModel(UNetControlNetBase):
    """ControlNet with Diffusers' config keys and state-dict names (see the module docstring).

    ``forward(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0, ...,
    guess_mode=False)`` returns :class:`ControlNetOutput` (or ``(down_block_res_samples,
    mid_block_res_sample)``).  ``controlnet_cond`` is the control image in ``[0, 1]`` at the pixel size of
    the latents times the VAE factor; ``added_cond_kwargs`` carries SDXL's ``text_embeds`` and ``time_ids``
    (``addition_embed_type="text_time"``).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 3,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                             "DownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        self._build(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ):
        """Residuals for a UNet evaluating ``sample`` at ``timestep`` (see the class docstring)."""
        if sample.ndim != 4 or controlnet_cond.ndim != 4:
            raise ValueError(f"sample and controlnet_cond must be (batch, channels, height, width), got "
                             f"{tuple(sample.shape)} and {tuple(controlnet_cond.shape)}")
        if self.config.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = torch.flip(controlnet_cond, dims=[1])
        attention_mask = mask_to_bias(attention_mask, sample.dtype)
        emb = self._embedding(sample, timestep, timestep_cond, class_labels, added_cond_kwargs)
        sample = self.conv_in(sample) + self.controlnet_cond_embedding(controlnet_cond)
        down, mid = self._residuals(sample, emb, encoder_hidden_states, attention_mask, cross_attention_kwargs)
        return self._finish(down, mid, conditioning_scale, guess_mode, return_dict)
