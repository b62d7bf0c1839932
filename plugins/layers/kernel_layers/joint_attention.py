"""Joint text-image attention (MMDiT, Esser et al., arXiv:2403.03206): what its processors share.

In an MMDiT block the image tokens and the text tokens keep separate weights (``to_q/k/v`` and
``to_out.0`` for the image, ``add_q/k/v_proj`` and ``to_add_out`` for the text) but attend as one
sequence.  Each family lays that sequence out its own way in its own processor (SD3's
``JointAttnProcessor`` in ``kernel_sd3``: ``[image, text]``; Flux's ``FluxAttnProcessor`` in
``kernel_flux``: ``[text, image]`` with rotary embeddings), built from the pieces here:

* :class:`BackendOptions` -- the ``backend`` / ``slice_size`` dispatch options of a processor;
* :func:`project_streams` -- split-head, normed ``(q, k, v)`` of the image stream and, when
  given, of the text stream (fused projections honoured);
* :class:`JointAttentionSwitches` -- model-wide backend, slicing and xformers switches that keep
  each layer's processor class (the shared ``AttentionMixin`` would install the plain processor).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernel_layers.attention import AttentionMixin, BackendOptions, slice_sizes

__all__ = ["BackendOptions", "JointAttentionSwitches", "project_streams"]


def _heads(attn, x: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
    """``(B, L, H*D) -> (B, H, L, D)`` with an optional per-head norm."""
    return attn.split_heads(x, norm)


def _image_qkv(attn, hidden_states: torch.Tensor):
    if attn.fused_projections and hasattr(attn, "to_qkv"):
        return attn.to_qkv(hidden_states).chunk(3, dim=-1)
    return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)


def _text_qkv(attn, encoder_hidden_states: torch.Tensor):
    if attn.fused_projections and hasattr(attn, "to_added_qkv"):
        return attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
    return (attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states),
            attn.add_v_proj(encoder_hidden_states))


def project_streams(attn, hidden_states, encoder_hidden_states):
    """Split-head ``(q, k, v)`` of the image stream and, when given, of the text stream (normed)."""
    q, k, v = _image_qkv(attn, hidden_states)
    image = (_heads(attn, q, attn.norm_q), _heads(attn, k, attn.norm_k), _heads(attn, v, None))
    if encoder_hidden_states is None:
        return image, None
    tq, tk, tv = _text_qkv(attn, encoder_hidden_states)
    text = (_heads(attn, tq, attn.norm_added_q), _heads(attn, tk, attn.norm_added_k), _heads(attn, tv, None))
    return image, text


class JointAttentionSwitches(AttentionMixin):
    """Model-wide attention switches that keep each layer's processor class.

    A model sets ``_attn_processor_cls`` to its processor class; the backend, slicing and
    xformers switches then install that class with the requested options.
    """

    _attn_processor_cls: type  # set by each model (its family's joint processor)

    def _install(self, backend: str | None = None, sizes: list[int | None] | None = None) -> None:
        layers = self._attention_layers()
        sizes = sizes if sizes is not None else [None] * len(layers)
        for (_, module), size in zip(layers, sizes):
            module.set_processor(self._attn_processor_cls(backend="sliced" if size else backend, slice_size=size))

    def set_default_attn_processor(self) -> None:
        self._install()

    def set_attention_backend(self, backend: str | None) -> None:
        self._install(backend=backend)

    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        self._install(backend="xformers")

    def set_attention_slice(self, slice_size: str | int | list[int | None] | None = "auto") -> None:
        """``"auto"`` (half the heads), ``"max"`` (one head at a time), an int, ``None`` or a per-layer list."""
        self._install(sizes=slice_sizes(slice_size, [m.sliceable_head_dim for _, m in self._attention_layers()]))
