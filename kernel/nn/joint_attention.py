"""Joint text-image attention (MMDiT, Esser et al., arXiv:2403.03206) as processors of the shared
:class:`kernel.nn.attention.Attention` layer.

In an MMDiT block the image tokens and the text tokens keep separate weights (``to_q/k/v`` and
``to_out.0`` for the image, ``add_q/k/v_proj`` and ``to_add_out`` for the text) but attend as one
sequence.  Two layouts of that sequence exist:

* :class:`JointAttnProcessor` (SD3 / SD3.5): ``[image, text]``, no positional term inside attention;
* :class:`FluxAttnProcessor` (Flux): ``[text, image]`` with rotary embeddings applied to the
  joined queries and keys; RMS-normed queries and keys on both streams.

Both fall back to plain self-attention when no text stream is given (SD3.5's second image
attention, Flux's single-stream blocks).  Both take the backend switch of the shared module
(``backend``, ``slice_size``), so :class:`JointAttentionSwitches` lets a model change backend,
slicing or xformers without losing the joint layout (the shared ``AttentionMixin`` would install
the plain processor).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernel.nn.attention import AttentionMixin, _check_backend
from kernel.nn.rotary import apply_rotary_emb


class _BackendOptions:
    """Carries the dispatch options every processor here passes to ``Attention.attend``."""

    def __init__(self, backend: str | None = None, slice_size: int | None = None):
        self.backend = _check_backend(backend)
        if slice_size is not None and (not isinstance(slice_size, int) or slice_size < 1):
            raise ValueError(f"slice_size must be a positive int or None, got {slice_size!r}")
        self.slice_size = slice_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, slice_size={self.slice_size!r})"


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


def _project_streams(attn, hidden_states, encoder_hidden_states):
    """Split-head ``(q, k, v)`` of the image stream and, when given, of the text stream (normed)."""
    q, k, v = _image_qkv(attn, hidden_states)
    image = (_heads(attn, q, attn.norm_q), _heads(attn, k, attn.norm_k), _heads(attn, v, None))
    if encoder_hidden_states is None:
        return image, None
    tq, tk, tv = _text_qkv(attn, encoder_hidden_states)
    text = (_heads(attn, tq, attn.norm_added_q), _heads(attn, tk, attn.norm_added_k), _heads(attn, tv, None))
    return image, text


class JointAttnProcessor(_BackendOptions):
    """SD3 joint attention over ``[image tokens, text tokens]``.

    Returns ``(image_out, text_out)`` with a text stream (``text_out`` unprojected when the layer is
    ``context_pre_only``, i.e. the last block) and ``image_out`` alone without one.
    """

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any):
        n_image = hidden_states.shape[1]
        image, text = _project_streams(attn, hidden_states, encoder_hidden_states)
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


class FluxAttnProcessor(_BackendOptions):
    """Flux attention over ``[text tokens, image tokens]`` with multi-axis rotary embeddings.

    ``image_rotary_emb`` is the ``(cos, sin)`` pair for the joined sequence.  With a text stream
    it returns ``(image_out, text_out)``; without one (single-stream blocks, where the caller has
    already joined the streams) the attention output, projected by ``to_out`` when the layer has it.
    """

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None, **kwargs: Any):
        image, text = _project_streams(attn, hidden_states, encoder_hidden_states)
        if text is None:
            q, k, v = image
        else:
            q, k, v = (torch.cat([b, a], dim=2) for a, b in zip(image, text))
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=2)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=2)
        out = attn.attend(q, k, v, attention_mask, backend=self.backend, slice_size=self.slice_size)
        out = attn.merge_heads(out).to(q.dtype)
        if text is None:
            return out if attn.to_out is None else attn.to_out[1](attn.to_out[0](out))
        n_text = encoder_hidden_states.shape[1]
        text_out, image_out = out[:, :n_text], out[:, n_text:]
        return attn.to_out[1](attn.to_out[0](image_out)), attn.to_add_out(text_out)


# Diffusers' class names for the same processors.
JointAttnProcessor2_0 = JointAttnProcessor


class JointAttentionSwitches(AttentionMixin):
    """Model-wide attention switches that keep each layer's processor class.

    A model sets ``_attn_processor_cls`` to its processor class; the backend, slicing and
    xformers switches then install that class with the requested options.
    """

    _attn_processor_cls: type = JointAttnProcessor

    def _install(self, backend: str | None = None, slice_sizes: list[int | None] | None = None) -> None:
        layers = self._attention_layers()
        sizes = slice_sizes if slice_sizes is not None else [None] * len(layers)
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
        dims = [m.sliceable_head_dim for _, m in self._attention_layers()]
        if slice_size == "auto":
            sizes = [max(1, d // 2) for d in dims]
        elif slice_size == "max":
            sizes = [1] * len(dims)
        elif isinstance(slice_size, list):
            sizes = list(slice_size)
        elif slice_size is None or isinstance(slice_size, int):
            sizes = [slice_size] * len(dims)
        else:
            raise ValueError(f"slice_size={slice_size!r}; use 'auto', 'max', an int, None or a list of those")
        if len(sizes) != len(dims):
            raise ValueError(f"slice_size list has {len(sizes)} entries but the model has {len(dims)} attention layers")
        for size, dim in zip(sizes, dims):
            if size is not None and (not isinstance(size, int) or not 1 <= size <= dim):
                raise ValueError(f"slice_size {size!r} must be an int between 1 and the layer's head count {dim}")
        self._install(slice_sizes=sizes)
