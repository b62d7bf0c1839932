"""The MMDiT denoiser of Stable Diffusion 3 / 3.5 (Esser et al., "Scaling Rectified Flow
Transformers for High-Resolution Image Synthesis", arXiv:2403.03206).

Latents ``(B, C, H, W)`` are cut into ``p x p`` patches with a centred crop of a fixed sin-cos
table; the text tokens (CLIP-L/G hidden states padded to the T5 width, then T5) are projected by
``context_embedder``.  Each :class:`JointTransformerBlock` runs adaLN-Zero modulated attention over
the joined image+text sequence with separate weights per stream, then per-stream MLPs.  The last
block only updates the image stream (``context_pre_only``).  SD3.5 adds RMS query/key norms
(``qk_norm="rms_norm"``) and, in ``dual_attention_layers``, a second image-only self-attention
(``attn2``) fed from the same normalised input with its own modulation (MMDiT-X).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel_layers.activations import FeedForward, chunked_feed_forward
from kernel_layers.attention import Attention
from kernel_layers.dit_embeddings import CombinedTimestepTextProjEmbeddings, PatchEmbed
from kernel_layers.joint_attention import JointAttentionSwitches
from kernel_layers.normalization import AdaLayerNormContinuous, AdaLayerNormZero, modulate
from kernel_layers.transformer_2d import Transformer2DModelOutput

from kernel_sd3.layers import JointAttnProcessor, SD35AdaLayerNormZeroX


def unpatchify(tokens: torch.Tensor, rows: int, cols: int, patch: int, channels: int) -> torch.Tensor:
    """``(B, rows*cols, p*p*C)`` tokens -> ``(B, C, rows*p, cols*p)`` (patch channels ordered ``(p, q, c)``)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, rows, cols, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, rows * patch, cols * patch)


class _GatedBranches(nn.Module):
    """Feed-forward with optional chunking (``set_chunk_feed_forward``), shared by the block kinds."""

    _chunk_size: int | None = None
    _chunk_dim: int = 0

    def set_chunk_feed_forward(self, chunk_size: int | None, dim: int = 0) -> None:
        self._chunk_size, self._chunk_dim = chunk_size, dim

    def _mlp(self, ff: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self._chunk_size is None:
            return ff(x)
        return chunked_feed_forward(ff, x, self._chunk_dim, self._chunk_size)


class JointTransformerBlock(_GatedBranches):
    """One MMDiT block; returns ``(encoder_hidden_states or None, hidden_states)``."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, context_pre_only: bool = False,
                 qk_norm: str | None = None, use_dual_attention: bool = False):
        super().__init__()
        self.use_dual_attention = use_dual_attention
        self.context_pre_only = context_pre_only
        self.norm1 = SD35AdaLayerNormZeroX(dim) if use_dual_attention else AdaLayerNormZero(dim)
        if context_pre_only:
            self.norm1_context = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6, bias=True,
                                                        norm_type="layer_norm")
        else:
            self.norm1_context = AdaLayerNormZero(dim)
        attention = dict(query_dim=dim, dim_head=attention_head_dim, heads=num_attention_heads, out_dim=dim,
                         bias=True, qk_norm=qk_norm, eps=1e-6)
        self.attn = Attention(added_kv_proj_dim=dim, context_pre_only=context_pre_only,
                              processor=JointAttnProcessor(), **attention)
        self.attn2 = Attention(processor=JointAttnProcessor(), **attention) if use_dual_attention else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim=dim, dim_out=dim, activation_fn="gelu-approximate")
        if context_pre_only:
            self.norm2_context = None
            self.ff_context = None
        else:
            self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.ff_context = FeedForward(dim=dim, dim_out=dim, activation_fn="gelu-approximate")

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                joint_attention_kwargs: dict[str, Any] | None = None):
        extra = joint_attention_kwargs or {}
        if self.use_dual_attention:
            x, gate_msa, shift_mlp, scale_mlp, gate_mlp, x2, gate_msa2 = self.norm1(hidden_states, emb=temb)
        else:
            x, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
        if self.context_pre_only:
            c = self.norm1_context(encoder_hidden_states, temb)
        else:
            c, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(encoder_hidden_states, emb=temb)

        image_attn, text_attn = self.attn(hidden_states=x, encoder_hidden_states=c, **extra)
        hidden_states = hidden_states + gate_msa.unsqueeze(1) * image_attn
        if self.use_dual_attention:
            hidden_states = hidden_states + gate_msa2.unsqueeze(1) * self.attn2(hidden_states=x2, **extra)
        mlp_in = modulate(self.norm2(hidden_states), shift_mlp, scale_mlp)
        hidden_states = hidden_states + gate_mlp.unsqueeze(1) * self._mlp(self.ff, mlp_in)

        if self.context_pre_only:
            return None, hidden_states
        encoder_hidden_states = encoder_hidden_states + c_gate_msa.unsqueeze(1) * text_attn
        text_in = modulate(self.norm2_context(encoder_hidden_states), c_shift_mlp, c_scale_mlp)
        encoder_hidden_states = encoder_hidden_states + c_gate_mlp.unsqueeze(1) * self._mlp(self.ff_context, text_in)
        return encoder_hidden_states, hidden_states


class SD3Transformer2DModel(JointAttentionSwitches, ModelMixin):
    """SD3 / SD3.5 MMDiT.  ``forward(hidden_states (B,C,H,W), encoder_hidden_states (B,S,joint_attention_dim),
    pooled_projections (B,pooled_projection_dim), timestep (B,))`` -> ``sample (B, out_channels, H, W)``."""

    component_kind = "denoiser"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["JointTransformerBlock"]
    _attn_processor_cls = JointAttnProcessor

    @register_to_config
    def __init__(
        self,
        sample_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 16,
        num_layers: int = 18,
        attention_head_dim: int = 64,
        num_attention_heads: int = 18,
        joint_attention_dim: int = 4096,
        caption_projection_dim: int = 1152,
        pooled_projection_dim: int = 2048,
        out_channels: int = 16,
        pos_embed_max_size: int = 96,
        dual_attention_layers: tuple[int, ...] = (),
        qk_norm: str | None = None,
    ):
        super().__init__()
        if qk_norm not in (None, "rms_norm", "layer_norm"):
            raise ValueError(f"qk_norm={qk_norm!r} is not supported by SD3; use None, 'rms_norm' or 'layer_norm'")
        bad = [i for i in dual_attention_layers if not 0 <= int(i) < num_layers]
        if bad:
            raise ValueError(f"dual_attention_layers {bad} are outside the {num_layers} layers (0..{num_layers - 1})")
        self.out_channels = out_channels if out_channels is not None else in_channels
        self.inner_dim = num_attention_heads * attention_head_dim
        self.pos_embed = PatchEmbed(height=sample_size, width=sample_size, patch_size=patch_size,
                                    in_channels=in_channels, embed_dim=self.inner_dim,
                                    pos_embed_max_size=pos_embed_max_size)
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(self.inner_dim, pooled_projection_dim)
        self.context_embedder = nn.Linear(joint_attention_dim, caption_projection_dim)
        dual = {int(i) for i in dual_attention_layers}
        self.transformer_blocks = nn.ModuleList([
            JointTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim,
                                  context_pre_only=i == num_layers - 1, qk_norm=qk_norm,
                                  use_dual_attention=i in dual)
            for i in range(num_layers)
        ])
        self.norm_out = AdaLayerNormContinuous(self.inner_dim, self.inner_dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(self.inner_dim, patch_size * patch_size * self.out_channels, bias=True)
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        block_controlnet_hidden_states: list | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        skip_layers: list[int] | None = None,
    ):
        if encoder_hidden_states is None or pooled_projections is None or timestep is None:
            raise ValueError("SD3Transformer2DModel needs encoder_hidden_states, pooled_projections and timestep")
        patch = self.config.patch_size
        height, width = hidden_states.shape[-2:]
        if height % patch or width % patch:
            raise ValueError(f"latent size {height}x{width} is not divisible by patch_size={patch}")
        if encoder_hidden_states.shape[0] != hidden_states.shape[0] or \
                pooled_projections.shape[0] != hidden_states.shape[0]:
            raise ValueError(
                f"batch sizes differ: hidden_states {hidden_states.shape[0]}, encoder_hidden_states "
                f"{encoder_hidden_states.shape[0]}, pooled_projections {pooled_projections.shape[0]}")
        kwargs = dict(joint_attention_kwargs or {})
        kwargs.pop("scale", None)  # LoRA scale: no LoRA layers here yet

        x = self.pos_embed(hidden_states).contiguous()
        temb = self.time_text_embed(timestep, pooled_projections)
        context = self.context_embedder(encoder_hidden_states)
        skip = set(skip_layers or ())
        for index, block in enumerate(self.transformer_blocks):
            if index not in skip:
                if torch.is_grad_enabled() and self.gradient_checkpointing:
                    context, x = torch.utils.checkpoint.checkpoint(block, x, context, temb, kwargs, use_reentrant=False)
                else:
                    context, x = block(x, context, temb, joint_attention_kwargs=kwargs)
            if block_controlnet_hidden_states is not None and not block.context_pre_only:
                every = len(self.transformer_blocks) / len(block_controlnet_hidden_states)
                x = x + block_controlnet_hidden_states[int(index / every)]

        x = self.proj_out(self.norm_out(x, temb))
        out = unpatchify(x, height // patch, width // patch, patch, self.out_channels)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)
