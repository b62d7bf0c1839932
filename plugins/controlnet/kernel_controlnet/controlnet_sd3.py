"""ControlNet for the MMDiT of Stable Diffusion 3 / 3.5 (Zhang et al., arXiv:2302.05543, applied to the
transformer of Esser et al., arXiv:2403.03206, as InstantX's SD3 ControlNets do).

A trainable copy of the first transformer blocks reads the noisy latents ``(B, C, H, W)`` plus the
control image's VAE latents ``(B, C + extra, H, W)``, each patch-embedded (the control's embedding,
``pos_embed_input``, starts at zero and carries no position table), and returns one residual per block,
each through a zero-initialised linear layer (``controlnet_blocks``): ``(B, N, inner_dim)`` tokens that
the transformer adds to its image stream (``block_controlnet_hidden_states``, spread evenly over its
blocks).  Unlike the transformer, every block keeps its text stream (no ``context_pre_only`` block).

SD3.5's ControlNets (``joint_attention_dim=None``) have no text stream at all: image-only blocks
(:class:`SD3SingleTransformerBlock`) and no position embedding of their own (``use_pos_embed=False``;
the pipeline lends them the transformer's, :meth:`SD3ControlNetModel.set_pos_embed_from_transformer`).

Blocks come from ``kernel-sd3`` and ``kernel-layers``; module names are Diffusers' state-dict keys.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel_layers.activations import FeedForward
from kernel_layers.attention import Attention
from kernel_layers.dit_embeddings import CombinedTimestepTextProjEmbeddings, PatchEmbed
from kernel_layers.joint_attention import JointAttentionSwitches
from kernel_layers.normalization import AdaLayerNormZero, modulate
from kernel_sd3.layers import JointAttnProcessor
from kernel_sd3.transformer_sd3 import JointTransformerBlock

from kernel_controlnet.controlnet import zero_module
from kernel_controlnet.multicontrolnet import NetList, add_samples


@dataclass
class SD3ControlNetOutput(BaseOutput):
    """``controlnet_block_samples``: one ``(B, N, inner_dim)`` residual per ControlNet block, first to last."""

    controlnet_block_samples: tuple[torch.Tensor, ...] = None


class SD3SingleTransformerBlock(nn.Module):
    """An image-only MMDiT block (SD3.5 ControlNets): adaLN-Zero self-attention, then an adaLN-Zero MLP."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int):
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)
        self.attn = Attention(query_dim=dim, dim_head=attention_head_dim, heads=num_attention_heads, out_dim=dim,
                              bias=True, eps=1e-6, processor=JointAttnProcessor())
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim=dim, dim_out=dim, activation_fn="gelu-approximate")

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
        hidden_states = hidden_states + gate_msa.unsqueeze(1) * self.attn(hidden_states=x, encoder_hidden_states=None)
        mlp_in = modulate(self.norm2(hidden_states), shift_mlp, scale_mlp)
        return hidden_states + gate_mlp.unsqueeze(1) * self.ff(mlp_in)


class SD3ControlNetModel(JointAttentionSwitches, ModelMixin):
    """SD3 / SD3.5 ControlNet with Diffusers' config keys and state-dict names (see the module docstring).

    ``forward(hidden_states (B,C,H,W), controlnet_cond (B,C+extra,H,W), conditioning_scale=1.0,
    encoder_hidden_states (B,S,joint_attention_dim) or None, pooled_projections (B,pooled_projection_dim),
    timestep (B,))`` -> :class:`SD3ControlNetOutput` (or ``(controlnet_block_samples,)``).

    ``force_zeros_for_pooled_projection`` is read by the pipelines: the net then gets zeros for the pooled
    text, and its control latents are encoded without the VAE's shift (the SD3.0 nets were trained so).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["JointTransformerBlock", "SD3SingleTransformerBlock"]
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
        joint_attention_dim: int | None = 4096,
        caption_projection_dim: int = 1152,
        pooled_projection_dim: int = 2048,
        out_channels: int = 16,
        pos_embed_max_size: int = 96,
        extra_conditioning_channels: int = 0,
        dual_attention_layers: tuple[int, ...] = (),
        qk_norm: str | None = None,
        pos_embed_type: str | None = "sincos",
        use_pos_embed: bool = True,
        force_zeros_for_pooled_projection: bool = True,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        if qk_norm not in (None, "rms_norm", "layer_norm"):
            raise ValueError(f"qk_norm={qk_norm!r} is not supported; use None, 'rms_norm' or 'layer_norm'")
        if extra_conditioning_channels < 0:
            raise ValueError(f"extra_conditioning_channels must be >= 0, got {extra_conditioning_channels}")
        self.out_channels = out_channels if out_channels is not None else in_channels
        self.inner_dim = num_attention_heads * attention_head_dim
        patches = dict(height=sample_size, width=sample_size, patch_size=patch_size, embed_dim=self.inner_dim)
        self.pos_embed = PatchEmbed(in_channels=in_channels, pos_embed_max_size=pos_embed_max_size,
                                    pos_embed_type=pos_embed_type, **patches) if use_pos_embed else None
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(self.inner_dim, pooled_projection_dim)
        dual = {int(i) for i in dual_attention_layers}
        if joint_attention_dim is not None:
            self.context_embedder = nn.Linear(joint_attention_dim, caption_projection_dim)
            blocks = [JointTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim,
                                            context_pre_only=False, qk_norm=qk_norm, use_dual_attention=i in dual)
                      for i in range(num_layers)]
        else:
            self.context_embedder = None
            blocks = [SD3SingleTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim)
                      for _ in range(num_layers)]
        self.transformer_blocks = nn.ModuleList(blocks)
        self.controlnet_blocks = nn.ModuleList([zero_module(nn.Linear(self.inner_dim, self.inner_dim))
                                                for _ in range(num_layers)])
        self.pos_embed_input = zero_module(PatchEmbed(in_channels=in_channels + extra_conditioning_channels,
                                                      pos_embed_type=None, **patches))
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_transformer(cls, transformer: nn.Module, num_layers: int = 12, num_extra_conditioning_channels: int = 1,
                         load_weights_from_transformer: bool = True) -> "SD3ControlNetModel":
        """A new ControlNet from an ``SD3Transformer2DModel``: its config with ``num_layers`` blocks and
        ``num_extra_conditioning_channels`` extra control channels, and (optionally) its embeddings and
        first blocks' weights.  The control embedding and the output layers start at zero."""
        config = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
        config.update(num_layers=num_layers or config["num_layers"],
                      extra_conditioning_channels=num_extra_conditioning_channels)
        controlnet = cls.from_config(config)
        if load_weights_from_transformer:
            for name in ("pos_embed", "time_text_embed", "context_embedder"):
                getattr(controlnet, name).load_state_dict(getattr(transformer, name).state_dict())
            # The first ``num_layers`` blocks; the transformer's deeper ones have no counterpart.
            controlnet.transformer_blocks.load_state_dict(transformer.transformer_blocks.state_dict(), strict=False)
            zero_module(controlnet.pos_embed_input)
        return controlnet

    def set_pos_embed_from_transformer(self, transformer: nn.Module) -> None:
        """Borrow the transformer's patch embedding (a copy), for nets saved with ``use_pos_embed=False``."""
        self.pos_embed = copy.deepcopy(transformer.pos_embed).to(device=self.device, dtype=self.dtype)

    def enable_forward_chunking(self, chunk_size: int | None = None, dim: int = 0) -> None:
        """Run the feed-forward layers in chunks of ``chunk_size`` along ``dim`` (0: batch, 1: tokens)."""
        if dim not in (0, 1):
            raise ValueError(f"dim must be 0 or 1, got {dim}")
        for module in self.modules():
            if hasattr(module, "set_chunk_feed_forward"):
                module.set_chunk_feed_forward(chunk_size or 1, dim)

    # ------------------------------------------------------------------ forward
    def _block(self, block: nn.Module, x: torch.Tensor, context: torch.Tensor | None, temb: torch.Tensor):
        checkpoint = torch.is_grad_enabled() and self.gradient_checkpointing
        if context is None:
            if checkpoint:
                return None, torch.utils.checkpoint.checkpoint(block, x, temb, use_reentrant=False)
            return None, block(x, temb)
        if checkpoint:
            return torch.utils.checkpoint.checkpoint(block, x, context, temb, use_reentrant=False)
        return block(x, context, temb)

    def forward(
        self,
        hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ):
        if self.pos_embed is not None and hidden_states.ndim != 4:
            raise ValueError(f"hidden_states must be (B, C, H, W) latents, got shape {tuple(hidden_states.shape)}")
        if self.pos_embed is None and hidden_states.ndim != 3:
            raise ValueError("this ControlNet has no position embedding (use_pos_embed=False): pass patch tokens "
                             "(B, N, D), or build the pipeline so it lends the transformer's embedding")
        if (self.context_embedder is None) != (encoder_hidden_states is None):
            raise ValueError("encoder_hidden_states must be given exactly when the ControlNet has a text stream "
                             f"(joint_attention_dim={self.config.joint_attention_dim})")
        if pooled_projections is None or timestep is None:
            raise ValueError("SD3ControlNetModel needs pooled_projections and timestep")
        x = self.pos_embed(hidden_states) if self.pos_embed is not None else hidden_states
        temb = self.time_text_embed(timestep, pooled_projections)
        context = self.context_embedder(encoder_hidden_states) if self.context_embedder is not None else None
        x = x + self.pos_embed_input(controlnet_cond)
        samples = []
        for block, out in zip(self.transformer_blocks, self.controlnet_blocks):
            context, x = self._block(block, x, context, temb)
            samples.append(out(x) * conditioning_scale)
        if not return_dict:
            return (samples,)
        return SD3ControlNetOutput(controlnet_block_samples=samples)


class SD3MultiControlNetModel(NetList):
    """Several :class:`SD3ControlNetModel` whose residuals add up; ``forward`` takes one control-latent tensor
    and one ``conditioning_scale`` per net and returns ``(controlnet_block_samples,)``."""

    _net_class = SD3ControlNetModel

    def forward(
        self,
        hidden_states: torch.Tensor,
        controlnet_cond: Sequence[torch.Tensor],
        conditioning_scale: Sequence[float],
        pooled_projections: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ):
        self._check_per_net(controlnet_cond=controlnet_cond, conditioning_scale=conditioning_scale)
        total = None
        for net, cond, scale in zip(self.nets, controlnet_cond, conditioning_scale):
            samples = net(hidden_states, cond, scale, encoder_hidden_states=encoder_hidden_states,
                          pooled_projections=pooled_projections, timestep=timestep,
                          joint_attention_kwargs=joint_attention_kwargs, return_dict=False)[0]
            total = samples if total is None else add_samples(total, samples)
        if not return_dict:
            return (total,)
        return SD3ControlNetOutput(controlnet_block_samples=total)
