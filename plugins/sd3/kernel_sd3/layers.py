"""Layers only SD3 / SD3.5 use: the ``[image, text]`` joint attention processor and SD3.5's AdaLN-Zero-X.

The shared MMDiT pieces (stream projections, backend options, model-wide switches) are in
:mod:`kernel_layers.joint_attention`; the DiT norms in :mod:`kernel_layers.normalization`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernel_layers.joint_attention import BackendOptions, project_streams
from kernel_layers.normalization import adaln_norm, modulate


class JointAttnProcessor(BackendOptions):
    """SD3 joint attention (MMDiT, Esser et al., arXiv:2403.03206) over ``[image tokens, text tokens]``.

    Returns ``(image_out, text_out)`` with a text stream (``text_out`` unprojected when the layer is
    ``context_pre_only``, i.e. the last block) and ``image_out`` alone without one (SD3.5's second
    image attention).
    """

    #: Token order of the joint sequence (perturbed-attention guidance builds its mask from it).
    joint_layout = "image_text"

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any):
        n_image = hidden_states.shape[1]
        image, text = project_streams(attn, hidden_states, encoder_hidden_states)
        if text is None:
            q, k, v = image
        else:
            q, k, v = (torch.cat([a, b], dim=2) for a, b in zip(image, text))
        out = attn.attend(q, k, v, attention_mask, backend=self.backend, slice_size=self.slice_size)
        out = attn.merge_heads(out).to(q.dtype)
        image_out = attn.to_out[1](attn.to_out[0](out[:, :n_image]))
        if text is None:
            return image_out
        text_out = out[:, n_image:]
        if not attn.context_pre_only:
            text_out = attn.to_add_out(text_out)
        return image_out, text_out


# Diffusers' class name for the same processor.
JointAttnProcessor2_0 = JointAttnProcessor


class SD35AdaLayerNormZeroX(nn.Module):
    """Nine terms: attention (shift, scale, gate), MLP (shift, scale, gate), second attention (shift, scale, gate).

    Returns ``(x_attn, gate_msa, shift_mlp, scale_mlp, gate_mlp, x_attn2, gate_msa2)``; both
    modulated inputs share one normalisation of ``hidden_states``.
    """

    def __init__(self, embedding_dim: int, norm_type: str = "layer_norm", bias: bool = True):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 9 * embedding_dim, bias=bias)
        self.norm = adaln_norm(embedding_dim, norm_type)

    def forward(self, hidden_states: torch.Tensor, emb: torch.Tensor):
        terms = self.linear(self.silu(emb)).chunk(9, dim=1)
        shift1, scale1, gate1, shift_mlp, scale_mlp, gate_mlp, shift2, scale2, gate2 = terms
        normed = self.norm(hidden_states)
        return (modulate(normed, shift1, scale1), gate1, shift_mlp, scale_mlp, gate_mlp,
                modulate(normed, shift2, scale2), gate2)
