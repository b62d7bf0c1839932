"""The Flux.1 rectified-flow transformer (Black Forest Labs, 2024; MMDiT of Esser et al.,
arXiv:2403.03206, with parallel single-stream blocks after Dehghani et al., arXiv:2302.05442).

Input is a sequence of packed latents ``(B, (H/2)*(W/2), 4C)`` (each token a 2x2 patch, see
:mod:`kernel_flux.packing`) with integer position ids ``(tokens, 3)`` -- (0, row, col) for image
tokens and zeros for text tokens -- that become multi-axis rotary embeddings.  ``num_layers``
double-stream blocks keep separate image/text weights and attend jointly over ``[text, image]``;
``num_single_layers`` single-stream blocks then process the joined sequence with attention and
MLP in parallel.  Flux-dev embeds the distilled guidance strength next to the timestep
(``guidance_embeds=True``); Flux-schnell has no guidance input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel_layers.activations import FeedForward
from kernel_layers.attention import Attention
from kernel_layers.dit_embeddings import CombinedTimestepTextProjEmbeddings
from kernel_layers.joint_attention import JointAttentionSwitches
from kernel_layers.normalization import AdaLayerNormContinuous, AdaLayerNormZero, modulate
from kernel_layers.transformer_2d import Transformer2DModelOutput

from kernel_flux.layers import AdaLayerNormZeroSingle, CombinedTimestepGuidanceTextProjEmbeddings, FluxAttnProcessor
from kernel_flux.rotary import FluxPosEmbed

_FP16_MAX = 65504.0


def _clip_fp16(x: torch.Tensor) -> torch.Tensor:
    # Half-precision residual streams overflow on real checkpoints; saturate instead of inf.
    return x.clip(-_FP16_MAX, _FP16_MAX) if x.dtype == torch.float16 else x


def _flux_attention(dim: int, heads: int, head_dim: int, **extra: Any) -> Attention:
    return Attention(query_dim=dim, dim_head=head_dim, heads=heads, out_dim=dim, bias=True, qk_norm="rms_norm",
                     eps=1e-6, processor=FluxAttnProcessor(), **extra)


class FluxTransformerBlock(nn.Module):
    """Double-stream block; returns ``(encoder_hidden_states, hidden_states)``."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, qk_norm: str = "rms_norm",
                 eps: float = 1e-6):
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormZero(dim)
        self.attn = _flux_attention(dim, num_attention_heads, attention_head_dim, added_kv_proj_dim=dim,
                                    context_pre_only=False)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim=dim, dim_out=dim, activation_fn="gelu-approximate")
        self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff_context = FeedForward(dim=dim, dim_out=dim, activation_fn="gelu-approximate")

    def forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None,
                joint_attention_kwargs: dict[str, Any] | None = None):
        x, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
        c, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(encoder_hidden_states, emb=temb)
        outputs = self.attn(hidden_states=x, encoder_hidden_states=c, image_rotary_emb=image_rotary_emb,
                            **(joint_attention_kwargs or {}))
        image_attn, text_attn = outputs[0], outputs[1]

        hidden_states = hidden_states + gate_msa.unsqueeze(1) * image_attn
        mlp_in = modulate(self.norm2(hidden_states), shift_mlp, scale_mlp)
        hidden_states = hidden_states + gate_mlp.unsqueeze(1) * self.ff(mlp_in)
        if len(outputs) == 3:  # an IP-Adapter processor's extra image-prompt attention
            hidden_states = hidden_states + outputs[2]

        encoder_hidden_states = encoder_hidden_states + c_gate_msa.unsqueeze(1) * text_attn
        text_in = modulate(self.norm2_context(encoder_hidden_states), c_shift_mlp, c_scale_mlp)
        encoder_hidden_states = encoder_hidden_states + c_gate_mlp.unsqueeze(1) * self.ff_context(text_in)
        return _clip_fp16(encoder_hidden_states), hidden_states


class FluxSingleTransformerBlock(nn.Module):
    """Single-stream block over ``[text, image]``: ``x + gate * proj_out([attn(x'), gelu(proj_mlp(x'))])``."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.mlp_hidden_dim = int(dim * mlp_ratio)
        self.norm = AdaLayerNormZeroSingle(dim)
        self.proj_mlp = nn.Linear(dim, self.mlp_hidden_dim)
        self.act_mlp = nn.GELU(approximate="tanh")
        self.proj_out = nn.Linear(dim + self.mlp_hidden_dim, dim)
        self.attn = _flux_attention(dim, num_attention_heads, attention_head_dim, pre_only=True)

    def forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None,
                joint_attention_kwargs: dict[str, Any] | None = None):
        n_text = encoder_hidden_states.shape[1]
        joined = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        x, gate = self.norm(joined, emb=temb)
        mlp = self.act_mlp(self.proj_mlp(x))
        attn = self.attn(hidden_states=x, image_rotary_emb=image_rotary_emb, **(joint_attention_kwargs or {}))
        joined = _clip_fp16(joined + gate.unsqueeze(1) * self.proj_out(torch.cat([attn, mlp], dim=2)))
        return joined[:, :n_text], joined[:, n_text:]


def _as_2d_ids(ids: torch.Tensor, name: str) -> torch.Tensor:
    if ids.ndim == 3:  # older callers pass a batch axis; every row is the same
        ids = ids[0]
    if ids.ndim != 2:
        raise ValueError(f"{name} must have shape (tokens, 3), got {tuple(ids.shape)}")
    return ids


class FluxTransformer2DModel(JointAttentionSwitches, ModelMixin):
    """Flux.1 transformer.  ``forward(hidden_states (B, N, in_channels), encoder_hidden_states (B, S, joint_attention_dim),
    pooled_projections (B, pooled_projection_dim), timestep (B,) in [0, 1], img_ids (N, 3), txt_ids (S, 3),
    guidance (B,) for guidance-distilled models)`` -> ``sample (B, N, out_channels)``."""

    component_kind = "denoiser"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["FluxTransformerBlock", "FluxSingleTransformerBlock"]
    _attn_processor_cls = FluxAttnProcessor

    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        out_channels: int | None = None,
        num_layers: int = 19,
        num_single_layers: int = 38,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 768,
        guidance_embeds: bool = False,
        axes_dims_rope: tuple[int, int, int] = (16, 56, 56),
    ):
        super().__init__()
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(f"axes_dims_rope {tuple(axes_dims_rope)} must sum to attention_head_dim={attention_head_dim}")
        self.out_channels = out_channels or in_channels
        self.inner_dim = num_attention_heads * attention_head_dim
        self.pos_embed = FluxPosEmbed(theta=10000, axes_dim=axes_dims_rope)
        embed_cls = CombinedTimestepGuidanceTextProjEmbeddings if guidance_embeds else CombinedTimestepTextProjEmbeddings
        self.time_text_embed = embed_cls(embedding_dim=self.inner_dim, pooled_projection_dim=pooled_projection_dim)
        self.context_embedder = nn.Linear(joint_attention_dim, self.inner_dim)
        self.x_embedder = nn.Linear(in_channels, self.inner_dim)
        self.transformer_blocks = nn.ModuleList([
            FluxTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim) for _ in range(num_layers)
        ])
        self.single_transformer_blocks = nn.ModuleList([
            FluxSingleTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim)
            for _ in range(num_single_layers)
        ])
        self.norm_out = AdaLayerNormContinuous(self.inner_dim, self.inner_dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(self.inner_dim, patch_size * patch_size * self.out_channels, bias=True)
        self.gradient_checkpointing = False

    def _run(self, block, x, context, temb, rope, kwargs):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return torch.utils.checkpoint.checkpoint(block, x, context, temb, rope, kwargs, use_reentrant=False)
        return block(x, context, temb, image_rotary_emb=rope, joint_attention_kwargs=kwargs)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        img_ids: torch.Tensor | None = None,
        txt_ids: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        controlnet_block_samples=None,
        controlnet_single_block_samples=None,
        return_dict: bool = True,
        controlnet_blocks_repeat: bool = False,
    ):
        for name, value in (("encoder_hidden_states", encoder_hidden_states), ("pooled_projections", pooled_projections),
                            ("timestep", timestep), ("img_ids", img_ids), ("txt_ids", txt_ids)):
            if value is None:
                raise ValueError(f"FluxTransformer2DModel.forward needs {name}")
        uses_guidance = self.config.guidance_embeds
        if uses_guidance and guidance is None:
            raise ValueError("this Flux model embeds guidance (guidance_embeds=True): pass guidance=")
        if not uses_guidance and guidance is not None:
            raise ValueError("this Flux model has no guidance embedding (guidance_embeds=False, e.g. schnell): "
                             "pass guidance=None")
        txt_ids, img_ids = _as_2d_ids(txt_ids, "txt_ids"), _as_2d_ids(img_ids, "img_ids")
        if img_ids.shape[0] != hidden_states.shape[1] or txt_ids.shape[0] != encoder_hidden_states.shape[1]:
            raise ValueError(
                f"img_ids has {img_ids.shape[0]} rows for {hidden_states.shape[1]} image tokens and txt_ids "
                f"{txt_ids.shape[0]} rows for {encoder_hidden_states.shape[1]} text tokens; they must match")
        kwargs = dict(joint_attention_kwargs or {})
        kwargs.pop("scale", None)  # LoRA scale: no LoRA layers here yet

        x = self.x_embedder(hidden_states)
        t = timestep.to(x.dtype) * 1000
        if uses_guidance:
            temb = self.time_text_embed(t, guidance.to(x.dtype) * 1000, pooled_projections)
        else:
            temb = self.time_text_embed(t, pooled_projections)
        context = self.context_embedder(encoder_hidden_states)
        rope = self.pos_embed(torch.cat((txt_ids, img_ids), dim=0))

        for index, block in enumerate(self.transformer_blocks):
            context, x = self._run(block, x, context, temb, rope, kwargs)
            if controlnet_block_samples is not None:
                n = len(controlnet_block_samples)
                every = -(-len(self.transformer_blocks) // n)
                x = x + controlnet_block_samples[index % n if controlnet_blocks_repeat else index // every]
        for index, block in enumerate(self.single_transformer_blocks):
            context, x = self._run(block, x, context, temb, rope, kwargs)
            if controlnet_single_block_samples is not None:
                every = -(-len(self.single_transformer_blocks) // len(controlnet_single_block_samples))
                x = x + controlnet_single_block_samples[index // every]

        out = self.proj_out(self.norm_out(x, temb))
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)
