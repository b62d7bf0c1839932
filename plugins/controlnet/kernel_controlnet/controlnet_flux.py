"""ControlNet for the Flux.1 transformer (Zhang et al., arXiv:2302.05543, as InstantX's and XLabs' Flux
ControlNets apply it).

A trainable copy of a few double- and single-stream Flux blocks reads the packed noisy latents
``(B, N, in_channels)`` plus the control: the control image's packed VAE latents ``(B, N, in_channels)``
(InstantX) or, with ``conditioning_embedding_channels`` set, the control image itself ``(B, 3, H, W)``
through a small convolutional encoder (``input_hint_block``, XLabs).  Its embedding
(``controlnet_x_embedder``) is added to the latents' and each block's image tokens go through a
zero-initialised linear layer: ``controlnet_block_samples`` / ``controlnet_single_block_samples``, added by
the transformer to its own blocks' image stream.

Union ControlNets (``num_mode``) learn one embedding per control type (canny, depth, ...): the call's
``controlnet_mode`` picks it and it is put in front of the text tokens.

Blocks come from ``kernel-flux`` and ``kernel-layers``; module names are Diffusers' state-dict keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel_flux.layers import CombinedTimestepGuidanceTextProjEmbeddings, FluxAttnProcessor
from kernel_flux.rotary import FluxPosEmbed
from kernel_flux.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
from kernel_layers.dit_embeddings import CombinedTimestepTextProjEmbeddings
from kernel_layers.joint_attention import JointAttentionSwitches

from kernel_controlnet.controlnet import ControlNetConditioningEmbedding, zero_module
from kernel_controlnet.multicontrolnet import NetList, add_samples


@dataclass
class FluxControlNetOutput(BaseOutput):
    """One ``(B, N, inner_dim)`` residual per double-stream block and per single-stream block (None where the
    net has no blocks of that kind)."""

    controlnet_block_samples: tuple[torch.Tensor, ...] | None = None
    controlnet_single_block_samples: tuple[torch.Tensor, ...] | None = None


def mode_rows(mode: Any, rows: int, device: torch.device | None = None) -> torch.Tensor:
    """A union ControlNet's mode (an int, or a tensor of one or ``rows`` entries) as ``(rows, 1)`` long ids."""
    ids = torch.as_tensor(mode, dtype=torch.long, device=device).reshape(-1, 1)
    if ids.shape[0] not in (1, rows):
        raise ValueError(f"controlnet_mode has {ids.shape[0]} entries for a batch of {rows}; give 1 or {rows}")
    return ids.expand(rows, 1)


def _ids_2d(ids: torch.Tensor) -> torch.Tensor:
    return ids[0] if ids.ndim == 3 else ids  # older callers pass a batch axis; every row is the same


class FluxControlNetModel(JointAttentionSwitches, ModelMixin):
    """Flux ControlNet with Diffusers' config keys and state-dict names (see the module docstring).

    ``forward(hidden_states (B,N,in_channels), controlnet_cond, controlnet_mode=None, conditioning_scale=1.0,
    encoder_hidden_states (B,S,joint_attention_dim), pooled_projections, timestep (B,) in [0, 1], img_ids (N,3),
    txt_ids (S,3), guidance (B,) for guidance-embedding nets)`` -> :class:`FluxControlNetOutput` (or the
    ``(controlnet_block_samples, controlnet_single_block_samples)`` pair).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["FluxTransformerBlock", "FluxSingleTransformerBlock"]
    _attn_processor_cls = FluxAttnProcessor

    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        num_layers: int = 19,
        num_single_layers: int = 38,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 768,
        guidance_embeds: bool = False,
        axes_dims_rope: tuple[int, ...] = (16, 56, 56),
        num_mode: int | None = None,
        conditioning_embedding_channels: int | None = None,
    ):
        super().__init__()
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(f"axes_dims_rope {tuple(axes_dims_rope)} must sum to "
                             f"attention_head_dim={attention_head_dim}")
        if num_mode is not None and num_mode < 1:
            raise ValueError(f"num_mode must be None or at least 1, got {num_mode}")
        self.out_channels = in_channels
        self.inner_dim = dim = num_attention_heads * attention_head_dim
        self.pos_embed = FluxPosEmbed(theta=10000, axes_dim=axes_dims_rope)
        embed_cls = CombinedTimestepTextProjEmbeddings
        if guidance_embeds:
            embed_cls = CombinedTimestepGuidanceTextProjEmbeddings
        self.time_text_embed = embed_cls(embedding_dim=dim, pooled_projection_dim=pooled_projection_dim)
        self.context_embedder = nn.Linear(joint_attention_dim, dim)
        self.x_embedder = nn.Linear(in_channels, dim)
        self.transformer_blocks = nn.ModuleList([
            FluxTransformerBlock(dim, num_attention_heads, attention_head_dim) for _ in range(num_layers)])
        self.single_transformer_blocks = nn.ModuleList([
            FluxSingleTransformerBlock(dim, num_attention_heads, attention_head_dim) for _ in range(num_single_layers)])
        self.controlnet_blocks = nn.ModuleList([zero_module(nn.Linear(dim, dim)) for _ in range(num_layers)])
        self.controlnet_single_blocks = nn.ModuleList([zero_module(nn.Linear(dim, dim))
                                                       for _ in range(num_single_layers)])
        self.union = num_mode is not None
        if self.union:
            self.controlnet_mode_embedder = nn.Embedding(num_mode, dim)
        if conditioning_embedding_channels is not None:
            self.input_hint_block = ControlNetConditioningEmbedding(conditioning_embedding_channels,
                                                                    block_out_channels=(16, 16, 16, 16))
            self.controlnet_x_embedder = nn.Linear(in_channels, dim)
        else:
            self.input_hint_block = None
            self.controlnet_x_embedder = zero_module(nn.Linear(in_channels, dim))
        self.gradient_checkpointing = False

    @classmethod
    def from_transformer(cls, transformer: nn.Module, num_layers: int = 4, num_single_layers: int = 10,
                         attention_head_dim: int = 128, num_attention_heads: int = 24,
                         load_weights_from_transformer: bool = True) -> "FluxControlNetModel":
        """A new ControlNet from a ``FluxTransformer2DModel``: its config with the given depth and width, and
        (optionally) its embeddings and first blocks' weights; the control embedding starts at zero."""
        config = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_") and k != "out_channels"}
        config.update(num_layers=num_layers, num_single_layers=num_single_layers,
                      attention_head_dim=attention_head_dim, num_attention_heads=num_attention_heads)
        controlnet = cls.from_config(config)
        if load_weights_from_transformer:
            for name in ("pos_embed", "time_text_embed", "context_embedder", "x_embedder"):
                getattr(controlnet, name).load_state_dict(getattr(transformer, name).state_dict())
            for name in ("transformer_blocks", "single_transformer_blocks"):
                getattr(controlnet, name).load_state_dict(getattr(transformer, name).state_dict(), strict=False)
            zero_module(controlnet.controlnet_x_embedder)
        return controlnet

    @property
    def uses_image(self) -> bool:
        """Whether the control is the image itself (XLabs' ``input_hint_block``) rather than its VAE latents."""
        return self.input_hint_block is not None

    def _control_tokens(self, controlnet_cond: torch.Tensor) -> torch.Tensor:
        if self.input_hint_block is None:
            return controlnet_cond
        x = self.input_hint_block(controlnet_cond)  # (B, C, H/8, W/8)
        b, c, h, w = x.shape
        p = self.config.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), -1)

    def _run(self, block, x, context, temb, rope):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return torch.utils.checkpoint.checkpoint(block, x, context, temb, rope, use_reentrant=False)
        return block(x, context, temb, image_rotary_emb=rope)

    def forward(
        self,
        hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        controlnet_mode: torch.Tensor | int | None = None,
        conditioning_scale: float = 1.0,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        img_ids: torch.Tensor | None = None,
        txt_ids: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ):
        required = (("encoder_hidden_states", encoder_hidden_states), ("pooled_projections", pooled_projections),
                    ("timestep", timestep), ("img_ids", img_ids), ("txt_ids", txt_ids))
        for name, value in required:
            if value is None:
                raise ValueError(f"FluxControlNetModel.forward needs {name}")
        if self.config.guidance_embeds and guidance is None:
            raise ValueError("this Flux ControlNet embeds guidance (guidance_embeds=True): pass guidance=")
        if self.union and controlnet_mode is None:
            raise ValueError(f"controlnet_mode is required by a union ControlNet (num_mode={self.config.num_mode}): "
                             f"an int in [0, {self.config.num_mode})")
        x = self.x_embedder(hidden_states) + self.controlnet_x_embedder(self._control_tokens(controlnet_cond))
        t = timestep.to(x.dtype) * 1000
        if guidance is not None:
            temb = self.time_text_embed(t, guidance.to(x.dtype) * 1000, pooled_projections)
        else:
            temb = self.time_text_embed(t, pooled_projections)
        context = self.context_embedder(encoder_hidden_states)
        txt_ids, img_ids = _ids_2d(txt_ids), _ids_2d(img_ids)
        if self.union:
            modes = mode_rows(controlnet_mode, context.shape[0], context.device)
            context = torch.cat([self.controlnet_mode_embedder(modes), context], dim=1)
            txt_ids = torch.cat([txt_ids[:1], txt_ids], dim=0)  # the mode token sits at text position 0
        rope = self.pos_embed(torch.cat((txt_ids, img_ids), dim=0))

        samples, single_samples = [], []
        for block, out in zip(self.transformer_blocks, self.controlnet_blocks):
            context, x = self._run(block, x, context, temb, rope)
            samples.append(out(x) * conditioning_scale)
        for block, out in zip(self.single_transformer_blocks, self.controlnet_single_blocks):
            context, x = self._run(block, x, context, temb, rope)
            single_samples.append(out(x) * conditioning_scale)
        samples, single_samples = samples or None, single_samples or None
        if not return_dict:
            return samples, single_samples
        return FluxControlNetOutput(controlnet_block_samples=samples, controlnet_single_block_samples=single_samples)


class FluxMultiControlNetModel(NetList):
    """Several :class:`FluxControlNetModel` whose residuals add up.  ``forward`` takes one control, mode and
    scale per net; with a single (union) net, one per control image, all through that net."""

    _net_class = FluxControlNetModel

    def forward(
        self,
        hidden_states: torch.Tensor,
        controlnet_cond: Sequence[torch.Tensor],
        controlnet_mode: Sequence[Any] | None,
        conditioning_scale: Sequence[float],
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        img_ids: torch.Tensor | None = None,
        txt_ids: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ):
        modes = [None] * len(controlnet_cond) if controlnet_mode is None else list(controlnet_mode)
        if len(self.nets) > 1:
            self._check_per_net(controlnet_cond=controlnet_cond, conditioning_scale=conditioning_scale,
                                controlnet_mode=modes)
        elif not len(controlnet_cond) == len(conditioning_scale) == len(modes):
            raise ValueError("controlnet_cond, controlnet_mode and conditioning_scale need one entry per control image")
        nets = self.nets if len(self.nets) > 1 else [self.nets[0]] * len(controlnet_cond)
        total = total_single = None
        for i, (net, cond, mode, scale) in enumerate(zip(nets, controlnet_cond, modes, conditioning_scale)):
            samples, single = net(hidden_states, cond, mode if net.union else None, scale,
                                  encoder_hidden_states=encoder_hidden_states, pooled_projections=pooled_projections,
                                  timestep=timestep, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance,
                                  joint_attention_kwargs=joint_attention_kwargs, return_dict=False)
            if i == 0:
                total, total_single = samples, single
            else:
                total, total_single = add_samples(total, samples), add_samples(total_single, single)
        if not return_dict:
            return total, total_single
        return FluxControlNetOutput(controlnet_block_samples=total, controlnet_single_block_samples=total_single)
