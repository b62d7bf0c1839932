"""Multi-head attention with a switchable kernel ("backend").

Scaled dot-product attention (Vaswani et al., arXiv:1706.03762) is computed by
:func:`dispatch_attention` (from :mod:`kernel_layers.attention_dispatch`, re-exported here) with one of
the backends ``"sdpa"`` (default), ``"sliced"``, ``"math"``, ``"xformers"`` or ``"flash"``.

The process-wide default is set with :func:`set_attention_backend` (or the
:func:`attention_backend` context manager); a module or a whole model can override it through
its processor (``model.set_attention_backend("sliced")``, ``model.set_attention_slice(2)``).

:class:`Attention` keeps Diffusers' parameter names (``to_q``, ``to_k``, ``to_v``,
``to_out.0``, ``norm_q``/``norm_k``, ``add_q_proj``/``add_k_proj``/``add_v_proj``,
``to_add_out``, ``norm_added_q``/``norm_added_k``, ``group_norm``, ``spatial_norm``,
``norm_cross``) so Diffusers checkpoints load without remapping.  The computation lives in
a *processor*, called as ``processor(attn, hidden_states, encoder_hidden_states=None,
attention_mask=None, temb=None, **kwargs)`` -- the calling convention Diffusers uses, so a
processor written for Diffusers also runs here.  Other layouts (joint text-image attention
of MMDiT, IP-Adapter, ...) are further processor classes built from the pieces here:
:meth:`Attention.split_heads`, :meth:`Attention.merge_heads`, :meth:`Attention.attend`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernel_layers.attention_dispatch import (  # noqa: F401 - re-exported: the public attention API lives here
    BACKENDS,
    _check_backend,
    _optional_module,
    attention_backend,
    dispatch_attention,
    get_attention_backend,
    set_attention_backend,
)
from kernel.modeling import plugin_method
from kernel_layers.normalization import FP32LayerNorm, LpNorm, RMSNorm, SpatialNorm


# ----------------------------------------------------------------------------- processors
class BackendOptions:
    """The dispatch options a processor passes to :meth:`Attention.attend`.

    ``backend=None`` follows the process-wide default; ``slice_size`` is used by ``"sliced"``.
    """

    def __init__(self, backend: str | None = None, slice_size: int | None = None):
        self.backend = _check_backend(backend)
        if slice_size is not None and (not isinstance(slice_size, int) or slice_size < 1):
            raise ValueError(f"slice_size must be a positive int or None, got {slice_size!r}")
        self.slice_size = slice_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, slice_size={self.slice_size!r})"


class AttnProcessor(BackendOptions):
    """The standard processor: projections, :func:`dispatch_attention`, output projection.

    Handles self- and cross-attention, ``(B, C, H, W)`` feature maps (group norm, residual and
    output rescale of the VAE / UNet mid-block attention), attention masks, query/key norms and
    fused projections.
    """

    def __call__(self, attn: "Attention", hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs: Any):
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
        out = attn.attend(query, key, value, attention_mask, backend=self.backend, slice_size=self.slice_size)
        hidden_states = attn.to_out[1](attn.to_out[0](attn.merge_heads(out)))

        if image_shape is not None:
            hidden_states = hidden_states.transpose(1, 2).reshape(image_shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        if attn.rescale_output_factor != 1.0:
            hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states


# Diffusers' names for the same processor, so user code that sets them keeps working.
AttnProcessor2_0 = AttnProcessor
FusedAttnProcessor2_0 = AttnProcessor


class SlicedAttnProcessor(AttnProcessor):
    """The standard processor with the ``"sliced"`` backend."""

    def __init__(self, slice_size: int):
        super().__init__(backend="sliced", slice_size=slice_size)


class XFormersAttnProcessor(AttnProcessor):
    """The standard processor with the ``"xformers"`` backend."""

    def __init__(self, attention_op: Any = None):
        super().__init__(backend="xformers")


# ----------------------------------------------------------------------------- module
_QK_NORMS = ("layer_norm", "fp32_layer_norm", "layer_norm_across_heads", "rms_norm", "rms_norm_across_heads", "l2")


def _qk_norm(kind: str, dim_head: int, heads: int, eps: float, affine: bool) -> nn.Module:
    if kind == "layer_norm":
        return nn.LayerNorm(dim_head, eps=eps, elementwise_affine=affine)
    if kind == "fp32_layer_norm":
        return FP32LayerNorm(dim_head, elementwise_affine=False, bias=False, eps=eps)
    if kind == "layer_norm_across_heads":
        return nn.LayerNorm(dim_head * heads, eps=eps)
    if kind == "rms_norm":
        return RMSNorm(dim_head, eps=eps, elementwise_affine=affine)
    if kind == "rms_norm_across_heads":
        return RMSNorm(dim_head * heads, eps=eps)
    return LpNorm(p=2, dim=-1, eps=eps)


class Attention(nn.Module):
    """Multi-head (cross-)attention layer with Diffusers' parameter names and options.

    ``hidden_states`` is ``(B, L, query_dim)`` or a ``(B, query_dim, H, W)`` feature map;
    ``encoder_hidden_states`` (``(B, S, cross_attention_dim)``) turns it into cross-attention.
    """

    #: Set by ``model.enable_parallelism`` (kernel-distributed) when this layer's tokens are split across
    #: processes: ``context_parallel(attn, q, k, v, mask, backend=, slice_size=)`` replaces the local kernel.
    context_parallel: Any = None

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        kv_heads: int | None = None,
        dim_head: int = 64,
        dropout: float = 0.0,
        bias: bool = False,
        upcast_attention: bool = False,
        upcast_softmax: bool = False,
        cross_attention_norm: str | None = None,
        cross_attention_norm_num_groups: int = 32,
        qk_norm: str | None = None,
        added_kv_proj_dim: int | None = None,
        added_proj_bias: bool | None = True,
        norm_num_groups: int | None = None,
        spatial_norm_dim: int | None = None,
        out_bias: bool = True,
        scale_qk: bool = True,
        only_cross_attention: bool = False,
        eps: float = 1e-5,
        rescale_output_factor: float = 1.0,
        residual_connection: bool = False,
        _from_deprecated_attn_block: bool = False,
        processor: Any = None,
        out_dim: int | None = None,
        out_context_dim: int | None = None,
        context_pre_only: bool | None = None,
        pre_only: bool = False,
        elementwise_affine: bool = True,
        is_causal: bool = False,
    ):
        super().__init__()
        if qk_norm is not None and qk_norm not in _QK_NORMS:
            raise ValueError(f"qk_norm={qk_norm!r} is not supported; use None or one of {_QK_NORMS}")
        if cross_attention_norm not in (None, "layer_norm", "group_norm"):
            raise ValueError(f"cross_attention_norm={cross_attention_norm!r}; use None, 'layer_norm' or 'group_norm'")
        if only_cross_attention and added_kv_proj_dim is None:
            raise ValueError("only_cross_attention=True needs added_kv_proj_dim (the added key/value projections)")

        self.inner_dim = out_dim if out_dim is not None else dim_head * heads
        self.inner_kv_dim = self.inner_dim if kv_heads is None else dim_head * kv_heads
        self.query_dim = query_dim
        self.use_bias = bias
        self.is_cross_attention = cross_attention_dim is not None
        self.cross_attention_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.upcast_attention = upcast_attention
        self.upcast_softmax = upcast_softmax
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection
        self.dropout = dropout
        self.fused_projections = False
        self.out_dim = out_dim if out_dim is not None else query_dim
        self.out_context_dim = out_context_dim if out_context_dim is not None else query_dim
        self.context_pre_only = context_pre_only
        self.pre_only = pre_only
        self.is_causal = is_causal
        self._from_deprecated_attn_block = _from_deprecated_attn_block
        self.scale_qk = scale_qk
        self.scale = dim_head**-0.5 if scale_qk else 1.0
        self.heads = out_dim // dim_head if out_dim is not None else heads
        self.sliceable_head_dim = heads
        self.added_kv_proj_dim = added_kv_proj_dim
        self.added_proj_bias = added_proj_bias
        self.only_cross_attention = only_cross_attention
        self.qk_norm = qk_norm
        self._norm_across_heads = qk_norm in ("layer_norm_across_heads", "rms_norm_across_heads")

        self.group_norm = (nn.GroupNorm(num_channels=query_dim, num_groups=norm_num_groups, eps=eps, affine=True)
                           if norm_num_groups is not None else None)
        self.spatial_norm = SpatialNorm(query_dim, spatial_norm_dim) if spatial_norm_dim is not None else None

        kv_heads_ = kv_heads if kv_heads is not None else heads
        self.norm_q = _qk_norm(qk_norm, dim_head, heads, eps, elementwise_affine) if qk_norm else None
        self.norm_k = _qk_norm(qk_norm, dim_head, kv_heads_, eps, elementwise_affine) if qk_norm else None

        if cross_attention_norm == "layer_norm":
            self.norm_cross = nn.LayerNorm(self.cross_attention_dim)
        elif cross_attention_norm == "group_norm":
            channels = added_kv_proj_dim if added_kv_proj_dim is not None else self.cross_attention_dim
            self.norm_cross = nn.GroupNorm(num_channels=channels, num_groups=cross_attention_norm_num_groups,
                                           eps=1e-5, affine=True)
        else:
            self.norm_cross = None

        self.to_q = nn.Linear(query_dim, self.inner_dim, bias=bias)
        if not only_cross_attention:
            self.to_k = nn.Linear(self.cross_attention_dim, self.inner_kv_dim, bias=bias)
            self.to_v = nn.Linear(self.cross_attention_dim, self.inner_kv_dim, bias=bias)
        else:
            self.to_k = self.to_v = None

        self.add_q_proj = self.add_k_proj = self.add_v_proj = None
        if added_kv_proj_dim is not None:
            self.add_k_proj = nn.Linear(added_kv_proj_dim, self.inner_kv_dim, bias=added_proj_bias)
            self.add_v_proj = nn.Linear(added_kv_proj_dim, self.inner_kv_dim, bias=added_proj_bias)
            if context_pre_only is not None:
                self.add_q_proj = nn.Linear(added_kv_proj_dim, self.inner_dim, bias=added_proj_bias)

        self.to_out = None
        if not pre_only:
            self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, self.out_dim, bias=out_bias), nn.Dropout(dropout)])
        self.to_add_out = None
        if context_pre_only is not None and not context_pre_only:
            self.to_add_out = nn.Linear(self.inner_dim, self.out_context_dim, bias=out_bias)

        self.norm_added_q = self.norm_added_k = None
        if qk_norm is not None and added_kv_proj_dim is not None:
            if qk_norm in ("layer_norm", "fp32_layer_norm", "rms_norm"):
                self.norm_added_q = _qk_norm(qk_norm, dim_head, heads, eps, True if qk_norm == "rms_norm" else elementwise_affine)
                self.norm_added_k = _qk_norm(qk_norm, dim_head, heads, eps, True if qk_norm == "rms_norm" else elementwise_affine)
            elif qk_norm == "rms_norm_across_heads":
                self.norm_added_k = RMSNorm(dim_head * kv_heads_, eps=eps)
            else:
                raise ValueError(f"qk_norm={qk_norm!r} cannot be combined with added_kv_proj_dim; "
                                 "use 'layer_norm', 'fp32_layer_norm', 'rms_norm' or 'rms_norm_across_heads'")

        self.set_processor(processor if processor is not None else AttnProcessor())

    # ------------------------------------------------------------------ processors
    def set_processor(self, processor: Any) -> None:
        """Use ``processor`` (any callable with the processor signature) for this layer."""
        if not callable(processor):
            raise TypeError(f"processor must be callable as processor(attn, hidden_states, ...), got {processor!r}")
        if isinstance(getattr(self, "processor", None), nn.Module) and not isinstance(processor, nn.Module):
            self._modules.pop("processor", None)
        self.processor = processor

    def get_processor(self, return_deprecated_lora: bool = False) -> Any:
        return self.processor

    def set_attention_slice(self, slice_size: int | None) -> None:
        """Sliced attention over ``slice_size`` rows of ``batch * heads`` (``None``: back to the default)."""
        if slice_size is not None and slice_size > self.sliceable_head_dim:
            raise ValueError(f"slice_size={slice_size} must be at most the number of heads ({self.sliceable_head_dim})")
        self.set_processor(SlicedAttnProcessor(slice_size) if slice_size is not None else AttnProcessor())

    def set_attention_backend(self, backend: str | None) -> None:
        """Per-layer backend override (``None``: follow the process-wide default)."""
        self.set_processor(AttnProcessor(backend=backend))

    def set_use_memory_efficient_attention_xformers(self, use: bool, attention_op: Any = None) -> None:
        self.set_processor(XFormersAttnProcessor(attention_op) if use else AttnProcessor())

    # ------------------------------------------------------------------ building blocks for processors
    def project_qkv(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None):
        """Query from ``hidden_states``; key and value from the context (fused weights when fused)."""
        if encoder_hidden_states is None:
            if self.fused_projections and hasattr(self, "to_qkv"):
                return self.to_qkv(hidden_states).chunk(3, dim=-1)
            context = hidden_states
        else:
            context = self.norm_encoder_hidden_states(encoder_hidden_states) if self.norm_cross is not None \
                else encoder_hidden_states
        query = self.to_q(hidden_states)
        if self.fused_projections and hasattr(self, "to_kv"):
            key, value = self.to_kv(context).chunk(2, dim=-1)
        else:
            key, value = self.to_k(context), self.to_v(context)
        return query, key, value

    def split_heads(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """``(B, L, heads * D) -> (B, heads, L, D)``, applying a query/key ``norm`` where it belongs."""
        if norm is not None and self._norm_across_heads:
            x = norm(x)
            norm = None
        b, length, width = x.shape
        head_dim = self.inner_dim // self.heads
        x = x.view(b, length, width // head_dim, head_dim).transpose(1, 2)
        return norm(x) if norm is not None else x

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        """``(B, heads, L, D) -> (B, L, heads * D)``."""
        b, h, length, d = x.shape
        return x.transpose(1, 2).reshape(b, length, h * d)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None = None, backend: str | None = None,
               slice_size: int | None = None) -> torch.Tensor:
        """Attention of split-head tensors with this layer's scale, mask conventions and upcast flags."""
        if key.shape[1] != query.shape[1]:  # grouped-query attention: share each key/value head
            repeat = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
        if self.context_parallel is not None:  # the sequence is split across processes (kernel-distributed)
            return self.context_parallel(self, query, key, value, attention_mask, backend=backend,
                                         slice_size=slice_size).to(query.dtype)
        mask = self._mask_4d(attention_mask, query.shape[0], key.shape[2])
        out = dispatch_attention(
            query, key, value, mask, scale=None if self.scale_qk else self.scale, backend=backend,
            slice_size=slice_size, is_causal=self.is_causal, upcast_attention=self.upcast_attention,
            upcast_softmax=self.upcast_softmax,
        )
        return out.to(query.dtype)

    def _mask_4d(self, mask: torch.Tensor | None, batch: int, key_len: int) -> torch.Tensor | None:
        """Diffusers' mask layouts -> something that broadcasts to ``(B, heads, Lq, Lk)``.

        ``(B, Lk)`` and ``(B, 1 | Lq, Lk)`` biases (or boolean keep-masks) broadcast over heads;
        ``(B * heads, 1 | Lq, Lk)`` is split per head; 4-D masks pass through.
        """
        if mask is None:
            return None
        if mask.shape[-1] != key_len:
            raise ValueError(
                f"attention_mask covers {mask.shape[-1]} key tokens but the keys have {key_len}; "
                "give a mask of shape (batch, key_tokens) or (batch, 1, key_tokens)"
            )
        if mask.ndim == 2:
            return mask[:, None, None, :]
        if mask.ndim == 3:
            if mask.shape[0] == batch * self.heads and self.heads > 1:
                return mask.view(batch, self.heads, mask.shape[1], key_len)
            return mask[:, None]
        if mask.ndim == 4:
            return mask
        raise ValueError(f"attention_mask must have 2, 3 or 4 dimensions, got shape {tuple(mask.shape)}")

    # ------------------------------------------------------------------ Diffusers helper API
    def norm_encoder_hidden_states(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        if self.norm_cross is None:
            raise ValueError("this Attention has no norm_cross (cross_attention_norm=None)")
        if isinstance(self.norm_cross, nn.GroupNorm):
            return self.norm_cross(encoder_hidden_states.transpose(1, 2)).transpose(1, 2)
        return self.norm_cross(encoder_hidden_states)

    def head_to_batch_dim(self, tensor: torch.Tensor, out_dim: int = 3) -> torch.Tensor:
        """``(B, L, heads * D) -> (B * heads, L, D)`` (``out_dim=4``: ``(B, heads, L, D)``)."""
        if tensor.ndim == 4:
            tensor = tensor.flatten(1, 2)
        b, length, width = tensor.shape
        tensor = tensor.reshape(b, length, self.heads, width // self.heads).permute(0, 2, 1, 3)
        return tensor.reshape(b * self.heads, length, width // self.heads) if out_dim == 3 else tensor

    def batch_to_head_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(B * heads, L, D) -> (B, L, heads * D)``."""
        bh, length, d = tensor.shape
        return tensor.reshape(bh // self.heads, self.heads, length, d).permute(0, 2, 1, 3).reshape(
            bh // self.heads, length, self.heads * d)

    def get_attention_scores(self, query: torch.Tensor, key: torch.Tensor,
                             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax attention probabilities of ``(N, Lq, D)`` queries and ``(N, Lk, D)`` keys."""
        dtype = query.dtype
        if self.upcast_attention:
            query, key = query.float(), key.float()
        scores = torch.bmm(query, key.transpose(-1, -2)) * self.scale
        if attention_mask is not None:
            scores = scores + attention_mask
        if self.upcast_softmax:
            scores = scores.float()
        return scores.softmax(dim=-1).to(dtype)

    def prepare_attention_mask(self, attention_mask: torch.Tensor | None, target_length: int, batch_size: int,
                               out_dim: int = 3) -> torch.Tensor | None:
        """Repeat a ``(B, 1 | Lq, Lk)`` mask per head: ``(B * heads, ., Lk)`` or ``(B, heads, ., Lk)``."""
        if attention_mask is None:
            return None
        if attention_mask.shape[-1] != target_length:
            attention_mask = F.pad(attention_mask, (0, target_length), value=0.0)
        if out_dim == 3:
            if attention_mask.shape[0] < batch_size * self.heads:
                attention_mask = attention_mask.repeat_interleave(self.heads, dim=0)
            return attention_mask
        return attention_mask.unsqueeze(1).repeat_interleave(self.heads, dim=1)

    # ------------------------------------------------------------------ fused projections
    @torch.no_grad()
    def fuse_projections(self, fuse: bool = True) -> None:
        """Concatenate q/k/v (self-attention) or k/v (cross-attention) weights into one matmul."""
        if not fuse:
            self.unfuse_projections()
            return
        if self.fused_projections:
            return
        device, dtype = self.to_q.weight.device, self.to_q.weight.dtype

        def joined(layers: list[nn.Linear], bias: bool) -> nn.Linear:
            weight = torch.cat([layer.weight for layer in layers])
            fused = nn.Linear(weight.shape[1], weight.shape[0], bias=bias, device=device, dtype=dtype)
            fused.weight.copy_(weight)
            if bias:
                fused.bias.copy_(torch.cat([layer.bias for layer in layers]))
            return fused

        if self.to_k is not None:
            if self.is_cross_attention:
                self.to_kv = joined([self.to_k, self.to_v], self.use_bias)
            else:
                self.to_qkv = joined([self.to_q, self.to_k, self.to_v], self.use_bias)
        if self.add_q_proj is not None and self.add_k_proj is not None and self.add_v_proj is not None:
            self.to_added_qkv = joined([self.add_q_proj, self.add_k_proj, self.add_v_proj], bool(self.added_proj_bias))
        self.fused_projections = True

    def unfuse_projections(self) -> None:
        """Drop the fused weights; the separate projections (never removed) are used again."""
        for name in ("to_qkv", "to_kv", "to_added_qkv"):
            if name in self._modules:
                del self._modules[name]
        self.fused_projections = False

    # ------------------------------------------------------------------ forward
    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **cross_attention_kwargs: Any) -> torch.Tensor:
        return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, **cross_attention_kwargs)


# ----------------------------------------------------------------------------- model-level switches
def slice_sizes(slice_size: str | int | list[int | None] | None, dims: list[int]) -> list[int | None]:
    """One checked slice size per attention layer with ``dims[i]`` heads (the model-level ``slice_size``)."""
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
    return sizes


class AttentionMixin:
    """Model-wide attention switches, mixed into every model that contains :class:`Attention` layers."""

    @property
    def attn_processors(self) -> dict[str, Any]:
        """``{"<module path>.processor": processor}`` for every attention layer, in module order."""
        return {f"{name}.processor": m.get_processor() for name, m in self.named_modules()
                if hasattr(m, "set_processor") and hasattr(m, "get_processor")}

    def _attention_layers(self) -> list[tuple[str, nn.Module]]:
        return [(name, m) for name, m in self.named_modules() if hasattr(m, "set_processor") and hasattr(m, "get_processor")]

    def set_attn_processor(self, processor: Any) -> None:
        """Set one processor on every attention layer, or a dict keyed like :attr:`attn_processors`."""
        layers = self._attention_layers()
        if isinstance(processor, dict):
            expected = {f"{name}.processor" for name, _ in layers}
            if set(processor) != expected:
                missing, extra = sorted(expected - set(processor)), sorted(set(processor) - expected)
                raise ValueError(
                    f"processor dict must have exactly the {len(expected)} keys of attn_processors; "
                    f"missing {missing[:3]}, unexpected {extra[:3]}"
                )
            for name, module in layers:
                module.set_processor(processor[f"{name}.processor"])
            return
        for _, module in layers:
            module.set_processor(processor)

    def set_default_attn_processor(self) -> None:
        """Back to the standard processor following the process-wide backend."""
        self.set_attn_processor(AttnProcessor())

    def set_attention_backend(self, backend: str | None) -> None:
        """Use ``backend`` for every attention layer of this model (``None``: follow the process default)."""
        self.set_attn_processor(AttnProcessor(backend=backend))

    def reset_attention_backend(self) -> None:
        self.set_default_attn_processor()

    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        self.set_attn_processor(XFormersAttnProcessor(attention_op))

    enable_parallelism = plugin_method("enable_parallelism", "Split the token sequence across processes "
                                       "(config=ContextParallelConfig(...))", "kernel-distributed")

    def disable_xformers_memory_efficient_attention(self) -> None:
        self.set_default_attn_processor()

    def set_attention_slice(self, slice_size: str | int | list[int | None] | None = "auto") -> None:
        """Sliced attention: ``"auto"`` (half the heads), ``"max"`` (one row at a time), an int or a per-layer list."""
        layers = [m for _, m in self._attention_layers() if hasattr(m, "sliceable_head_dim")]
        for size, module in zip(slice_sizes(slice_size, [m.sliceable_head_dim for m in layers]), layers):
            module.set_attention_slice(size)

    def fuse_qkv_projections(self) -> None:
        """Fuse q/k/v (self-attention) and k/v (cross-attention) projections into single matmuls."""
        for _, module in self._attention_layers():
            if hasattr(module, "fuse_projections"):
                module.fuse_projections(fuse=True)

    def unfuse_qkv_projections(self) -> None:
        for _, module in self._attention_layers():
            if hasattr(module, "unfuse_projections"):
                module.unfuse_projections()

    def enable_forward_chunking(self, chunk_size: int | None = None, dim: int = 0) -> None:
        """Run transformer feed-forward layers in chunks of ``chunk_size`` along ``dim`` (0 batch, 1 tokens)."""
        if dim not in (0, 1):
            raise ValueError(f"dim={dim!r}; feed-forward chunking runs over dim 0 (batch) or 1 (tokens)")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        for module in self.modules():
            if hasattr(module, "set_chunk_feed_forward"):
                module.set_chunk_feed_forward(chunk_size=chunk_size or 1, dim=dim)

    def disable_forward_chunking(self) -> None:
        for module in self.modules():
            if hasattr(module, "set_chunk_feed_forward"):
                module.set_chunk_feed_forward(chunk_size=None, dim=0)
