"""``UNetMotionModel``: an SD UNet whose stages run a motion module after every layer (AnimateDiff,
Guo et al., arXiv:2307.04725).

Noisy video latents ``(B, C, F, H, W)``, a timestep and text tokens go in; the prediction
``(B, out_channels, F, H, W)`` comes out.  Frames are folded into the batch, so every 2-D layer
(ResNets, spatial transformers, resamplers: the ``kernel-unet`` stages) treats each frame as an image,
and the motion modules mix information along the frame axis.  Text tokens may be given once per video
``(B, S, D)`` or once per frame ``(B * F, S, D)`` (Diffusers' pipelines repeat them per frame).

Config keys and module names are Diffusers' (``CrossAttnDownBlockMotion`` ..., ``motion_modules``),
so Diffusers folders load unchanged.  :meth:`UNetMotionModel.from_unet2d` builds one from an SD
``UNet2DConditionModel`` and a :class:`~kernel_animatediff.motion_adapter.MotionAdapter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kernel.config import init_keys, register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel_layers.attention import AttentionMixin
from kernel_layers.embeddings import TimestepEmbedding, Timesteps
from kernel_layers.transformer_2d import mask_to_bias
from kernel_unet.blocks import UNetMidBlock2DCrossAttn
from kernel_unet.unet_2d_condition import broadcast_timesteps

from kernel_animatediff.blocks import (
    DOWN_MOTION_TYPES,
    UP_MOTION_TYPES,
    CrossAttnDownBlockMotion,
    CrossAttnUpBlockMotion,
    DownBlockMotion,
    UNetMidBlockCrossAttnMotion,
    UpBlockMotion,
)
from kernel_animatediff.motion_adapter import MotionAdapter, per_block


@dataclass
class UNetMotionOutput(BaseOutput):
    """``sample``: ``(B, out_channels, F, H, W)`` model output."""

    sample: torch.Tensor = None


def _reversed(value: Any, forward: list) -> list:
    if value is None:
        return list(reversed(forward))
    return [value] * len(forward) if isinstance(value, int) else list(value)


class UNetMotionModel(ModelMixin, AttentionMixin):
    """The motion UNet (see the module docstring)."""

    component_kind = "denoiser"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "TemporalTransformerBlock", "ResnetBlock2D"]
    _repeated_blocks = ["BasicTransformerBlock", "TemporalTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion",
                                             "CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types: tuple[str, ...] = ("UpBlockMotion", "CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion",
                                           "CrossAttnUpBlockMotion"),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 1280,
        transformer_layers_per_block: int | tuple = 1,
        reverse_transformer_layers_per_block: int | tuple | None = None,
        temporal_transformer_layers_per_block: int | tuple = 1,
        reverse_temporal_transformer_layers_per_block: int | tuple | None = None,
        transformer_layers_per_mid_block: int | tuple[int, ...] | None = None,
        temporal_transformer_layers_per_mid_block: int | tuple[int, ...] | None = 1,
        use_linear_projection: bool = False,
        num_attention_heads: int | tuple[int, ...] = 8,
        motion_max_seq_length: int = 32,
        motion_num_attention_heads: int | tuple[int, ...] = 8,
        reverse_motion_num_attention_heads: int | tuple | None = None,
        use_motion_mid_block: bool = True,
        mid_block_layers: int = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        projection_class_embeddings_input_dim: int | None = None,
        time_cond_proj_dim: int | None = None,
    ):
        super().__init__()
        self.sample_size = sample_size
        n = len(down_block_types)
        if len(up_block_types) != n:
            raise ValueError(f"down_block_types ({n}) and up_block_types ({len(up_block_types)}) differ in length")
        if len(block_out_channels) != n:
            raise ValueError(f"block_out_channels has {len(block_out_channels)} entries for {n} down blocks")
        for name, types, accepted in (("down_block_types", down_block_types, DOWN_MOTION_TYPES),
                                      ("up_block_types", up_block_types, UP_MOTION_TYPES)):
            wrong = [t for t in types if t not in accepted]
            if wrong:
                raise ValueError(f"{name} has {wrong}; a UNetMotionModel takes {list(accepted)}")
        if encoder_hid_dim_type is not None:
            raise ValueError(f"encoder_hid_dim_type={encoder_hid_dim_type!r} is not supported by UNetMotionModel; use None")
        if addition_embed_type not in (None, "text_time"):
            raise ValueError(f"addition_embed_type={addition_embed_type!r}; UNetMotionModel takes None or 'text_time'")
        if not isinstance(motion_max_seq_length, int) or motion_max_seq_length < 1:
            raise ValueError(f"motion_max_seq_length must be a positive int, got {motion_max_seq_length!r}")

        heads = per_block(num_attention_heads, n, "num_attention_heads")
        cross = per_block(cross_attention_dim, n, "cross_attention_dim")
        layers = per_block(layers_per_block, n, "layers_per_block")
        tlayers = per_block(transformer_layers_per_block, n, "transformer_layers_per_block")
        temporal = per_block(temporal_transformer_layers_per_block, n, "temporal_transformer_layers_per_block")
        motion_heads = per_block(motion_num_attention_heads, n, "motion_num_attention_heads")
        rev_tlayers = _reversed(reverse_transformer_layers_per_block, tlayers)
        rev_temporal = _reversed(reverse_temporal_transformer_layers_per_block, temporal)
        rev_motion_heads = _reversed(reverse_motion_num_attention_heads, motion_heads)

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        time_embed_dim = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], True, 0)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn,
                                                cond_proj_dim=time_cond_proj_dim)
        self.encoder_hid_proj = None
        if addition_embed_type == "text_time":
            if addition_time_embed_dim is None or projection_class_embeddings_input_dim is None:
                raise ValueError("addition_embed_type='text_time' needs addition_time_embed_dim and "
                                 "projection_class_embeddings_input_dim")
            self.add_time_proj = Timesteps(addition_time_embed_dim, True, 0)
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)

        shared = dict(temb_channels=time_embed_dim, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                      resnet_groups=norm_num_groups, temporal_max_seq_length=motion_max_seq_length)
        self.down_blocks = nn.ModuleList()
        out = block_out_channels[0]
        for i, kind in enumerate(down_block_types):
            inp, out = out, block_out_channels[i]
            common = dict(in_channels=inp, out_channels=out, num_layers=layers[i], add_downsample=i < n - 1,
                          downsample_padding=downsample_padding, temporal_num_attention_heads=motion_heads[i],
                          temporal_transformer_layers_per_block=temporal[i], **shared)
            if kind == "CrossAttnDownBlockMotion":
                block = CrossAttnDownBlockMotion(transformer_layers_per_block=tlayers[i], num_attention_heads=heads[i],
                                                 cross_attention_dim=cross[i],
                                                 use_linear_projection=use_linear_projection, **common)
            else:
                block = DownBlockMotion(**common)
            self.down_blocks.append(block)

        if transformer_layers_per_mid_block is None:
            transformer_layers_per_mid_block = tlayers[-1] if isinstance(tlayers[-1], int) else 1
        mid = dict(in_channels=block_out_channels[-1], temb_channels=time_embed_dim, resnet_eps=norm_eps,
                   resnet_act_fn=act_fn, output_scale_factor=mid_block_scale_factor, cross_attention_dim=cross[-1],
                   num_attention_heads=heads[-1], resnet_groups=norm_num_groups,
                   use_linear_projection=use_linear_projection, num_layers=mid_block_layers,
                   transformer_layers_per_block=transformer_layers_per_mid_block)
        if use_motion_mid_block:
            self.mid_block = UNetMidBlockCrossAttnMotion(
                temporal_num_attention_heads=motion_heads[-1], temporal_max_seq_length=motion_max_seq_length,
                temporal_transformer_layers_per_block=temporal_transformer_layers_per_mid_block, **mid)
        else:
            self.mid_block = UNetMidBlock2DCrossAttn(**mid)

        self.up_blocks = nn.ModuleList()
        self.num_upsamplers = 0
        rev_channels, rev_heads = list(reversed(block_out_channels)), heads[::-1]
        rev_layers, rev_cross = layers[::-1], cross[::-1]
        out = rev_channels[0]
        for i, kind in enumerate(up_block_types):
            final = i == n - 1
            prev, out = out, rev_channels[i]
            inp = rev_channels[min(i + 1, n - 1)]
            self.num_upsamplers += 0 if final else 1
            common = dict(in_channels=inp, out_channels=out, prev_output_channel=prev, resolution_idx=i,
                          num_layers=rev_layers[i] + 1, add_upsample=not final,
                          temporal_num_attention_heads=rev_motion_heads[i],
                          temporal_transformer_layers_per_block=rev_temporal[i], **shared)
            if kind == "CrossAttnUpBlockMotion":
                block = CrossAttnUpBlockMotion(transformer_layers_per_block=rev_tlayers[i],
                                               num_attention_heads=rev_heads[i], cross_attention_dim=rev_cross[i],
                                               use_linear_projection=use_linear_projection, **common)
            else:
                block = UpBlockMotion(**common)
            self.up_blocks.append(block)

        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    # ------------------------------------------------------------------ building from a 2-D UNet
    @classmethod
    def from_unet2d(cls, unet: nn.Module, motion_adapter: MotionAdapter | None = None,
                    load_weights: bool = True) -> "UNetMotionModel":
        """A motion UNet with ``unet``'s 2-D weights and ``motion_adapter``'s motion modules.

        Without an adapter the motion modules keep their fresh initialisation (for training one).
        The adapter must fit the UNet: as many stages, the same widths and layers per stage.
        """
        if not hasattr(unet, "down_blocks") or not hasattr(getattr(unet, "config", None), "get"):
            raise TypeError(f"from_unet2d takes a UNet2DConditionModel, got {type(unet).__name__}")
        if motion_adapter is not None and not isinstance(motion_adapter, MotionAdapter):
            raise TypeError(f"motion_adapter must be a MotionAdapter or None, got {type(motion_adapter).__name__}")
        ucfg = dict(unet.config)
        if motion_adapter is not None:
            check_adapter_fits(ucfg, motion_adapter.config)
        config = {k: v for k, v in ucfg.items() if not k.startswith("_")}
        config["down_block_types"] = ["CrossAttnDownBlockMotion" if "CrossAttn" in t else "DownBlockMotion"
                                      for t in ucfg["down_block_types"]]
        config["up_block_types"] = ["CrossAttnUpBlockMotion" if "CrossAttn" in t else "UpBlockMotion"
                                    for t in ucfg["up_block_types"]]
        if not config.get("num_attention_heads"):
            config["num_attention_heads"] = ucfg["attention_head_dim"]  # Diffusers' UNet stores heads there
        if motion_adapter is not None:
            acfg = motion_adapter.config
            config.update(motion_num_attention_heads=acfg["motion_num_attention_heads"],
                          motion_max_seq_length=acfg["motion_max_seq_length"],
                          use_motion_mid_block=acfg["use_motion_mid_block"],
                          layers_per_block=acfg["motion_layers_per_block"],
                          temporal_transformer_layers_per_mid_block=acfg["motion_transformer_layers_per_mid_block"],
                          temporal_transformer_layers_per_block=acfg["motion_transformer_layers_per_block"])
            if acfg.get("conv_in_channels"):
                config["in_channels"] = acfg["conv_in_channels"]
        keys = set(init_keys(cls))
        model = cls(**{k: v for k, v in config.items() if k in keys})
        if not load_weights:
            return model

        state = unet.state_dict()
        own = model.state_dict()
        wanted = {k: v for k, v in state.items() if k in own and not k.startswith("encoder_hid_proj")}
        if motion_adapter is not None and motion_adapter.config.get("conv_in_channels"):
            # the adapter's wider input convolution: the UNet's weights for the latent channels, the adapter's for the rest
            wide = motion_adapter.conv_in.weight
            wanted["conv_in.weight"] = torch.cat([state["conv_in.weight"], wide[:, state["conv_in.weight"].shape[1]:]], 1)
        missing = [k for k in own if k not in wanted and "motion_modules" not in k and not k.endswith(".pe")]
        if missing:
            raise ValueError(f"from_unet2d: the UNet lacks {len(missing)} weights the motion UNet needs, e.g. {missing[:3]}")
        model.load_state_dict(wanted, strict=False)
        if motion_adapter is not None:
            model.load_motion_modules(motion_adapter)
        return model.to(device=unet.device, dtype=unet.dtype)

    # ------------------------------------------------------------------ motion modules in and out
    def _motion_owners(self) -> list[tuple[str, nn.Module]]:
        owners = [(f"down_blocks.{i}", b) for i, b in enumerate(self.down_blocks)]
        if hasattr(self.mid_block, "motion_modules"):
            owners.append(("mid_block", self.mid_block))
        return owners + [(f"up_blocks.{i}", b) for i, b in enumerate(self.up_blocks)]

    def load_motion_modules(self, motion_adapter: MotionAdapter) -> None:
        """Copy ``motion_adapter``'s motion modules into this model (shapes checked first; nothing changes on error)."""
        if not isinstance(motion_adapter, MotionAdapter):
            raise TypeError(f"load_motion_modules takes a MotionAdapter, got {type(motion_adapter).__name__}")
        check_adapter_fits(self.config, motion_adapter.config, what="this UNetMotionModel")
        if motion_adapter.mid_block is not None and not hasattr(self.mid_block, "motion_modules"):
            raise ValueError("the motion adapter has mid-block motion modules (use_motion_mid_block=True) but this "
                             "UNetMotionModel was built without them")
        source = motion_adapter.state_dict()
        own = self.state_dict()
        update = {}
        for key, value in source.items():
            if "motion_modules" not in key:
                continue
            if key not in own or own[key].shape != value.shape:
                have = tuple(own[key].shape) if key in own else "no such weight"
                raise ValueError(f"motion adapter weight {key} {tuple(value.shape)} does not fit this UNetMotionModel "
                                 f"({have}); was the adapter made for another UNet or motion_max_seq_length?")
            update[key] = value
        self.load_state_dict(update, strict=False)

    def motion_state_dict(self) -> dict[str, torch.Tensor]:
        """The motion modules' weights, keyed as in a :class:`MotionAdapter`."""
        return {k: v for k, v in self.state_dict().items() if "motion_modules" in k}

    def save_motion_modules(self, save_directory, is_main_process: bool = True, safe_serialization: bool = True,
                            variant: str | None = None, **kwargs: Any) -> None:
        """Save the motion modules as a :class:`MotionAdapter` folder (loadable by Diffusers' ``MotionAdapter``)."""
        cfg = self.config
        adapter = MotionAdapter(
            block_out_channels=cfg["block_out_channels"], motion_layers_per_block=cfg["layers_per_block"],
            motion_transformer_layers_per_block=cfg["temporal_transformer_layers_per_block"],
            motion_mid_block_layers_per_block=cfg["mid_block_layers"],
            motion_transformer_layers_per_mid_block=cfg["temporal_transformer_layers_per_mid_block"],
            motion_norm_num_groups=cfg["norm_num_groups"], motion_num_attention_heads=cfg["motion_num_attention_heads"],
            motion_max_seq_length=cfg["motion_max_seq_length"], use_motion_mid_block=cfg["use_motion_mid_block"])
        result = adapter.load_state_dict(self.motion_state_dict(), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"this model's motion modules do not form a MotionAdapter (missing {result.missing_keys[:3]}, "
                             f"unexpected {result.unexpected_keys[:3]})")
        adapter.save_pretrained(save_directory, is_main_process=is_main_process, safe_serialization=safe_serialization,
                                variant=variant, **kwargs)

    def freeze_unet2d_params(self) -> None:
        """Train the motion modules only: every other parameter stops requiring gradients."""
        for name, param in self.named_parameters():
            param.requires_grad = "motion_modules" in name

    # ------------------------------------------------------------------ switches
    def set_free_noise(self, context_length: int | None, context_stride: int = 4,
                       weighting_scheme: str = "pyramid") -> None:
        """FreeNoise windows for every motion module (``None``: attend over all frames again); with windows the
        frame count is no longer bounded by ``motion_max_seq_length`` (:mod:`kernel_animatediff.free_noise`)."""
        from kernel_animatediff.temporal import TemporalTransformerBlock

        setting = None if context_length is None else (context_length, context_stride, weighting_scheme)
        if setting is not None and context_length > self.config.motion_max_seq_length:
            raise ValueError(f"context_length={context_length} is more than motion_max_seq_length="
                             f"{self.config.motion_max_seq_length}")
        for module in self.modules():
            if isinstance(module, TemporalTransformerBlock):
                module.free_noise = setting
        self._free_noise = setting

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU (Si et al., arXiv:2309.11497) in the up stages."""
        for block in self.up_blocks:
            block.s1, block.s2, block.b1, block.b2 = s1, s2, b1, b2

    def disable_freeu(self) -> None:
        for block in self.up_blocks:
            for k in ("s1", "s2", "b1", "b2"):
                setattr(block, k, None)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """Predict the model output for video latents ``sample`` ``(B, C, F, H, W)`` (see the module docstring).

        ControlNet residuals (per frame, ``(B * F, ...)``) are added to the skips and the mid-block output.
        """
        if sample.ndim != 5:
            raise ValueError(f"sample must be (batch, channels, frames, height, width), got shape {tuple(sample.shape)}")
        batch, _, frames, height, width = sample.shape
        if frames > self.config.motion_max_seq_length and getattr(self, "_free_noise", None) is None:
            raise ValueError(f"sample has {frames} frames but the motion modules cover at most "
                             f"motion_max_seq_length={self.config.motion_max_seq_length}")
        encoder_hidden_states = _per_frame(encoder_hidden_states, batch, frames, "encoder_hidden_states")
        if self.encoder_hid_proj is not None:  # an adapter's image projection (IP-Adapter): its tokens, per frame
            encoder_hidden_states = (encoder_hidden_states, self._image_tokens(added_cond_kwargs, frames))
        up_factor = 2**self.num_upsamplers
        forward_upsample_size = height % up_factor != 0 or width % up_factor != 0
        attention_mask = mask_to_bias(_per_frame(attention_mask, batch, frames, "attention_mask")
                                      if attention_mask is not None else None, sample.dtype)

        timesteps = broadcast_timesteps(timestep, batch, sample.device)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype), timestep_cond)
        if self.config.addition_embed_type == "text_time":
            cond = added_cond_kwargs or {}
            missing = [k for k in ("text_embeds", "time_ids") if k not in cond]
            if missing:
                raise ValueError(f"added_cond_kwargs must contain {missing} (addition_embed_type='text_time')")
            time_embeds = self.add_time_proj(cond["time_ids"].flatten()).reshape(cond["text_embeds"].shape[0], -1)
            emb = emb + self.add_embedding(torch.cat([cond["text_embeds"], time_embeds], dim=-1).to(emb.dtype))
        emb = emb.repeat_interleave(frames, dim=0)

        x = sample.permute(0, 2, 1, 3, 4).reshape(batch * frames, -1, height, width)
        x = self.conv_in(x)
        attn = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs)
        x, skips = down_path(self.down_blocks, x, emb, frames, attn)
        if down_block_additional_residuals is not None:
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))

        if hasattr(self.mid_block, "motion_modules"):
            x = self.mid_block(x, emb, num_frames=frames, **attn)
        else:
            x = self.mid_block(x, emb, **attn)
        if mid_block_additional_residual is not None:
            x = x + mid_block_additional_residual

        upsample_size = None
        for i, block in enumerate(self.up_blocks):
            count = len(block.resnets)
            res, skips = skips[-count:], skips[:-count]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            if getattr(block, "has_cross_attention", False):
                x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size,
                          num_frames=frames, **attn)
            else:
                x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size,
                          num_frames=frames)

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        out = x.reshape(batch, frames, *x.shape[1:]).permute(0, 2, 1, 3, 4)
        if not return_dict:
            return (out,)
        return UNetMotionOutput(sample=out)

    def _image_tokens(self, added_cond_kwargs: dict[str, Any] | None, frames: int) -> list[torch.Tensor]:
        """``added_cond_kwargs["image_embeds"]`` through ``encoder_hid_proj``, each video's tokens repeated for its
        frames; the attention processors receive ``(text states, image tokens)`` as the 2-D UNet passes them."""
        cond = added_cond_kwargs or {}
        if "image_embeds" not in cond:
            raise ValueError("this UNet projects image embeddings (an IP-Adapter is loaded): pass "
                             "added_cond_kwargs={'image_embeds': [...]} (one tensor per adapter), or remove the adapter")
        return [t.repeat_interleave(frames, dim=0) for t in self.encoder_hid_proj(cond["image_embeds"])]


def down_path(blocks, x: torch.Tensor, emb: torch.Tensor, frames: int,
              attn: dict[str, Any]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``x`` through the motion down stages (the cross-attention ones also get ``attn``), with the skips, ``x``
    first; shared by :class:`UNetMotionModel` and the SparseCtrl net."""
    skips: tuple[torch.Tensor, ...] = (x,)
    for block in blocks:
        if getattr(block, "has_cross_attention", False):
            x, res = block(hidden_states=x, temb=emb, num_frames=frames, **attn)
        else:
            x, res = block(hidden_states=x, temb=emb, num_frames=frames)
        skips += res
    return x, skips


def _per_frame(x: torch.Tensor, batch: int, frames: int, name: str) -> torch.Tensor:
    """Rows per video ``(B, ...)`` repeated for every frame; rows per frame ``(B * F, ...)`` kept."""
    if x is None:
        raise ValueError(f"{name} is required")
    if x.shape[0] == batch * frames:
        return x
    if x.shape[0] == batch:
        return x.repeat_interleave(frames, dim=0)
    raise ValueError(f"{name} has {x.shape[0]} rows; give one per video ({batch}) or one per frame "
                     f"({batch} x {frames} = {batch * frames})")


def check_adapter_fits(unet_config: Any, adapter_config: Any, what: str = "the UNet") -> None:
    """A motion adapter fits a UNet when it has as many stages, the same widths and the same layers per stage."""
    widths = list(unet_config["block_out_channels"])
    adapter_widths = list(adapter_config["block_out_channels"])
    n = len(unet_config["down_block_types"])
    if adapter_widths != widths:
        raise ValueError(f"the motion adapter is for UNet stages of widths {adapter_widths} (block_out_channels) but "
                         f"{what} has stages of widths {widths}; use an adapter made for this UNet")
    layers = per_block(unet_config["layers_per_block"], n, "layers_per_block")
    adapter_layers = per_block(adapter_config["motion_layers_per_block"], n, "motion_layers_per_block")
    if layers != adapter_layers:
        raise ValueError(f"the motion adapter has {adapter_layers} motion layers per stage (motion_layers_per_block) but "
                         f"{what} has {layers} layers per stage (layers_per_block)")
