"""ControlNet-Union for the SDXL UNet (xinsir's "ControlNet++", Diffusers' ``ControlNetUnionModel``): one net for
several kinds of control (pose, depth, edges, ...), chosen per control image by a *control mode*.

The trunk is a :class:`~kernel_controlnet.controlnet.ControlNetModel`'s (a copy of the UNet's encoder half,
zero convolutions out).  What differs is how the control enters:

* each control image ``k`` goes through the control-image encoder to ``c_k`` ``(B, C, H, W)``; its spatial
  mean plus the learned embedding of its mode (``task_embedding[mode_k]``) is one token, and the spatial mean
  of the noisy input's features ``x`` one more;
* the tokens go through small pre-norm transformer blocks (``transformer_layes``, the checkpoint's spelling)
  and each control's output token is projected (``spatial_ch_projs``, zero-initialised) to a per-channel
  offset ``a_k``; the net then starts from ``x + sum_k (c_k + a_k)``;
* the multi-hot vector of the modes in use (``control_type``) is embedded like SDXL's size ids
  (``control_type_proj``, ``control_add_embedding``) and added to the time embedding.

Scales follow Diffusers: with one control image (or inside a ``MultiControlNetUnionModel``) the residuals are
multiplied by its ``conditioning_scale``; with several images in one net each image's ``c_k``, ``a_k`` and token
are multiplied by its own scale and the residuals are not scaled.

One quirk is kept on purpose, for the checkpoints' numbers: the reference feeds the ``(batch, tokens, channels)``
tokens to a sequence-first ``nn.MultiheadAttention``, so the attention runs across the *batch* (each token
position attends over the rows of the batch) rather than across a row's tokens.  Only the control tokens are
used afterwards, so when every row has the same control images (the usual case: one image shared by the batch)
nothing changes; with a different control image per row, a row's residuals depend on the other rows' images.
The model is therefore not batch-independent (declared in ``_known_contract_failures``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

from kernel.config import register_to_config
from kernel_layers.embeddings import TimestepEmbedding, Timesteps
from kernel_layers.transformer_2d import mask_to_bias

from kernel_controlnet.controlnet import UNetControlNetBase, zero_module


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (CLIP's GELU approximation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ControlTokenBlock(nn.Module):
    """A pre-norm transformer block over the control tokens (OpenAI CLIP's residual attention block layout:
    ``ln_1``, ``attn``, ``ln_2``, ``mlp.c_fc`` / ``mlp.c_proj``).  ``attn`` is a sequence-first
    ``nn.MultiheadAttention`` that is given ``(batch, tokens, width)``: it attends across the batch (see the
    module docstring)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, width * 4), gelu=QuickGELU(),
                                             c_proj=nn.Linear(width * 4, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ControlNetUnionModel(UNetControlNetBase):
    """SDXL ControlNet-Union with Diffusers' config keys and state-dict names (see the module docstring).

    ``forward(sample, timestep, encoder_hidden_states, controlnet_cond, control_type, control_type_idx,
    conditioning_scale=1.0, ..., from_multi=False, guess_mode=False)``: ``controlnet_cond`` a list of control
    images ``(B, 3, H, W)`` in ``[0, 1]``, ``control_type_idx`` the mode of each, ``control_type`` the multi-hot
    ``(B, num_control_type)`` (or one row) of the modes in use, ``conditioning_scale`` a number or one per image.
    """

    _known_contract_failures = {
        "batch_independence": "the control-token attention runs across the batch (rows with different control "
                              "images interact), as in the reference checkpoints",
    }

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 3,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                             "DownBlock2D"),
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
        conditioning_embedding_out_channels: tuple[int, ...] | None = (48, 96, 192, 384),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
        num_control_type: int = 6,
        num_trans_channel: int = 320,
        num_trans_head: int = 8,
        num_trans_layer: int = 1,
        num_proj_channel: int = 320,
    ):
        super().__init__()
        if encoder_hid_dim_type is not None or encoder_hid_dim is not None:
            raise ValueError("ControlNetUnionModel takes no encoder_hid_dim / encoder_hid_dim_type (they must be None)")
        if controlnet_conditioning_channel_order != "rgb":
            raise ValueError(f"ControlNetUnionModel takes RGB control images only "
                             f"(controlnet_conditioning_channel_order='rgb'), got {controlnet_conditioning_channel_order!r}")
        if addition_time_embed_dim is None:
            raise ValueError("ControlNetUnionModel needs addition_time_embed_dim: the control modes are embedded "
                             "with it")
        width = block_out_channels[0]
        if num_trans_channel != width or num_proj_channel != width:
            raise ValueError(f"num_trans_channel ({num_trans_channel}) and num_proj_channel ({num_proj_channel}) must "
                             f"equal block_out_channels[0] ({width}): the control tokens are that wide")
        if num_control_type < 1 or num_trans_channel % num_trans_head:
            raise ValueError(f"num_control_type must be >= 1 and num_trans_head ({num_trans_head}) must divide "
                             f"num_trans_channel ({num_trans_channel})")
        self._build(**{k: v for k, v in locals().items() if k not in ("self", "__class__")},
                    mid_block_type="UNetMidBlock2DCrossAttn")
        # Overwritten by the checkpoint; a fresh net starts from random unit-variance embeddings times sqrt(width).
        self.task_embedding = nn.Parameter(num_trans_channel ** 0.5 * torch.randn(num_control_type, num_trans_channel))
        self.transformer_layes = nn.ModuleList(ControlTokenBlock(num_trans_channel, num_trans_head)
                                               for _ in range(num_trans_layer))
        self.spatial_ch_projs = zero_module(nn.Linear(num_trans_channel, num_proj_channel))
        self.control_type_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
        self.control_add_embedding = TimestepEmbedding(addition_time_embed_dim * num_control_type,
                                                       block_out_channels[0] * 4)

    @classmethod
    def from_unet(cls, unet: torch.nn.Module, controlnet_conditioning_channel_order: str = "rgb",
                  conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
                  load_weights_from_unet: bool = True, conditioning_channels: int = 3, **config: Any):
        """A union net shaped like ``unet``'s encoder half, its weights copied from ``unet``; the control tokens
        are ``block_out_channels[0]`` wide unless ``config`` says otherwise."""
        width = unet.config.block_out_channels[0]
        config = {"num_trans_channel": width, "num_proj_channel": width,
                  "num_trans_head": next(h for h in (8, 4, 2, 1) if width % h == 0), **config}
        return super().from_unet(unet, controlnet_conditioning_channel_order, conditioning_embedding_out_channels,
                                 load_weights_from_unet, conditioning_channels, **config)

    def control_type_of(self, modes: Sequence[int], rows: int = 1, device=None, dtype=None) -> torch.Tensor:
        """The multi-hot ``(rows, num_control_type)`` vector of ``modes`` (Diffusers' ``control_type``)."""
        n = self.config.num_control_type
        bad = [m for m in modes if not isinstance(m, int) or isinstance(m, bool) or not 0 <= m < n]
        if bad:
            raise ValueError(f"control_mode must be ints in [0, {n}) for this ControlNetUnionModel, got {list(modes)}")
        hot = torch.zeros(n, device=device, dtype=dtype or torch.float32)
        hot[list(modes)] = 1
        return hot.expand(rows, n)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: Sequence[torch.Tensor],
        control_type: torch.Tensor,
        control_type_idx: Sequence[int],
        conditioning_scale: float | Sequence[float] = 1.0,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        from_multi: bool = False,
        guess_mode: bool = False,
        return_dict: bool = True,
    ):
        """Residuals for a UNet evaluating ``sample`` at ``timestep`` (see the class and module docstrings)."""
        images = list(controlnet_cond) if isinstance(controlnet_cond, (list, tuple)) else [controlnet_cond]
        modes = list(control_type_idx)
        scales = list(conditioning_scale) if isinstance(conditioning_scale, (list, tuple)) else \
            [conditioning_scale] * len(images)
        if not images or len(modes) != len(images) or len(scales) != len(images):
            raise ValueError(f"controlnet_cond ({len(images)}), control_type_idx ({len(modes)}) and "
                             f"conditioning_scale ({len(scales)}) need one entry per control image")
        batch = sample.shape[0]
        if control_type.ndim == 1:
            control_type = control_type[None]
        if control_type.shape[0] not in (1, batch) or control_type.shape[1] != self.config.num_control_type:
            raise ValueError(f"control_type must be (1 or {batch}, {self.config.num_control_type}), got "
                             f"{tuple(control_type.shape)}")
        attention_mask = mask_to_bias(attention_mask, sample.dtype)
        emb = self._embedding(sample, timestep, timestep_cond, class_labels, added_cond_kwargs)
        modes_emb = self.control_type_proj(control_type.expand(batch, -1).flatten()).reshape(batch, -1)
        emb = emb + self.control_add_embedding(modes_emb.to(emb.dtype))

        x = self.conv_in(sample)
        one_scale = from_multi or len(images) == 1  # the residuals carry the scale, not the controls
        tokens, controls = [], []
        for image, mode, scale in zip(images, modes, scales):
            c = self.controlnet_cond_embedding(image)
            token = c.mean(dim=(2, 3)) + self.task_embedding[mode]
            weight = 1.0 if one_scale else scale
            tokens.append(token * weight if weight != 1.0 else token)
            controls.append((c * weight if weight != 1.0 else c, weight))
        tokens.append(x.mean(dim=(2, 3)))
        t = torch.stack(tokens, dim=1)
        for block in self.transformer_layes:
            t = block(t)
        fused = torch.zeros_like(x)
        for k, (c, weight) in enumerate(controls):
            offset = self.spatial_ch_projs(t[:, k])[:, :, None, None]
            fused = fused + (c + (offset * weight if weight != 1.0 else offset))
        down, mid = self._residuals(x + fused, emb, encoder_hidden_states, attention_mask, cross_attention_kwargs)
        return self._finish(down, mid, scales[0] if one_scale else 1.0, guess_mode, return_dict)
