"""Decoupled cross-attention of IP-Adapter (Ye et al. 2023, arXiv:2308.06721, eq. 5).

A cross-attention layer attends to the text tokens as before, and, separately, to each IP-Adapter's
image tokens with that adapter's own key/value projections (``to_k_ip[i]``, ``to_v_ip[i]``); the
image attention is added with the adapter's scale before the output projection:

    out = to_out(Attn(q, K_text, V_text) + sum_i scale_i * Attn(q, K_i, V_i))

The UNet hands the layer ``encoder_hidden_states=(text_tokens, [image_tokens_i ...])``, each image
tensor ``(batch, images, tokens, cross_attention_dim)`` (the output of
:class:`kernel_ip_adapter.projection.MultiIPAdapterImageProjection`).  With
``ip_adapter_masks`` (one ``(1, images, H, W)`` mask per adapter, from
:class:`kernel_ip_adapter.masks.IPAdapterMaskProcessor`) each image only acts inside its region and a
scale may be a list with one value per image.  A plain ``encoder_hidden_states`` tensor (no image tokens)
gives the text attention alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from kernel_ip_adapter.masks import IPAdapterMaskProcessor

Scale = float | list[float]


def is_off(scale: Scale) -> bool:
    """Whether an adapter's scale switches it off in a layer (0, or all zeros)."""
    return all(s == 0 for s in scale) if isinstance(scale, (list, tuple)) else scale == 0


class IPAdapterAttnProcessor(nn.Module):
    """Attention processor with one pair of image key/value projections per IP-Adapter.

    ``hidden_size``: the layer's inner width (``to_k``'s outputs); ``cross_attention_dim``: the width of
    the image tokens; ``num_tokens``: image tokens per image, one entry per adapter; ``scale``: one per
    adapter (a float, or a list of per-image floats for masked images).  ``backend`` / ``slice_size``
    are the attention kernel options of the processor it replaced, so a backend choice survives.
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int | None = None, num_tokens: Sequence[int] | int = (4,),
                 scale: Scale | list[Scale] = 1.0, backend: str | None = None, slice_size: int | None = None):
        super().__init__()
        num_tokens = list(num_tokens) if isinstance(num_tokens, (list, tuple)) else [num_tokens]
        scales = list(scale) if isinstance(scale, list) else [scale] * len(num_tokens)
        if len(scales) != len(num_tokens):
            raise ValueError(f"scale has {len(scales)} entries for {len(num_tokens)} IP-Adapters")
        self.hidden_size = hidden_size
        self.cross_attention_dim = cross_attention_dim or hidden_size
        self.num_tokens = num_tokens
        self.scale = scales
        self.backend, self.slice_size = backend, slice_size
        self.to_k_ip = nn.ModuleList([nn.Linear(self.cross_attention_dim, hidden_size, bias=False) for _ in num_tokens])
        self.to_v_ip = nn.ModuleList([nn.Linear(self.cross_attention_dim, hidden_size, bias=False) for _ in num_tokens])

    def _attend(self, attn, query: torch.Tensor, tokens: torch.Tensor, i: int) -> torch.Tensor:
        key = attn.split_heads(self.to_k_ip[i](tokens))
        value = attn.split_heads(self.to_v_ip[i](tokens))
        out = attn.attend(query, key, value, None, backend=self.backend, slice_size=self.slice_size)
        return attn.merge_heads(out)

    def _check_masks(self, masks: Any, image_tokens: Sequence[torch.Tensor]) -> list:
        if masks is None:
            return [None] * len(self.scale)
        if isinstance(masks, torch.Tensor):  # Diffusers' older form: (adapters, 1, H, W)
            masks = list(masks.unsqueeze(1))
        if not len(masks) == len(self.scale) == len(image_tokens):
            raise ValueError(f"ip_adapter_masks has {len(masks)} entries for {len(self.scale)} IP-Adapters; give one "
                             "mask tensor (or None) per adapter")
        for i, (mask, tokens, scale) in enumerate(zip(masks, image_tokens, self.scale)):
            if mask is None:
                continue
            if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
                raise ValueError("each ip_adapter_masks entry must be a (1, images, height, width) tensor; make them "
                                 "with IPAdapterMaskProcessor.preprocess and reshape to (1, images, H, W)")
            if mask.shape[1] != tokens.shape[1]:
                raise ValueError(f"ip_adapter_masks[{i}] has {mask.shape[1]} masks for {tokens.shape[1]} IP-Adapter "
                                 "images")
            if isinstance(scale, (list, tuple)) and len(scale) != mask.shape[1]:
                raise ValueError(f"IP-Adapter {i} has {len(scale)} scales for {mask.shape[1]} masks")
        return list(masks)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Any = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 ip_adapter_masks: Any = None, **kwargs: Any) -> torch.Tensor:
        image_tokens: Sequence[torch.Tensor] = ()
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, image_tokens = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = None
        if hidden_states.ndim == 4:
            image_shape = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query, key, value = attn.project_qkv(hidden_states, encoder_hidden_states)
        query, key, value = attn.split_heads(query, attn.norm_q), attn.split_heads(key, attn.norm_k), attn.split_heads(value)
        out = attn.merge_heads(attn.attend(query, key, value, attention_mask, backend=self.backend,
                                           slice_size=self.slice_size))

        masks = self._check_masks(ip_adapter_masks, image_tokens)
        for i, (tokens, scale, mask) in enumerate(zip(image_tokens, self.scale, masks)):
            if is_off(scale):
                continue
            if mask is None:
                if isinstance(scale, (list, tuple)):
                    raise ValueError(f"IP-Adapter {i} has per-image scales {scale}, which need ip_adapter_masks")
                out = out + scale * self._attend(attn, query, tokens.flatten(1, 2) if tokens.ndim == 4 else tokens, i)
                continue
            scales = scale if isinstance(scale, (list, tuple)) else [scale] * mask.shape[1]
            for j in range(mask.shape[1]):
                part = self._attend(attn, query, tokens[:, j], i)
                weight = IPAdapterMaskProcessor.downsample(mask[:, j], part.shape[0], part.shape[1], part.shape[2])
                out = out + scales[j] * (part * weight.to(dtype=part.dtype, device=part.device))

        hidden_states = attn.to_out[1](attn.to_out[0](out))
        if image_shape is not None:
            hidden_states = hidden_states.transpose(1, 2).reshape(image_shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        if attn.rescale_output_factor != 1.0:
            hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, num_tokens={self.num_tokens}, scale={self.scale}"


# Diffusers' names for the same processor.
IPAdapterAttnProcessor2_0 = IPAdapterAttnProcessor
