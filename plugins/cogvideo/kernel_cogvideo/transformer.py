"""The CogVideoX expert transformer (Yang et al., "CogVideoX", arXiv:2408.06072).

Text tokens and video patch tokens are joined as one ``[text, video]`` sequence and go through full 3-D
self-attention and one feed-forward; the "expert" adaptive LayerNorm gives each modality its own
timestep-conditioned shift, scale and gate (:class:`CogVideoXLayerNormZero`).  Position comes either from a
3-D sin-cos table added at the patch embedding (2b) or from 3-D rotary embeddings applied to the video
queries/keys (5b, 1.5; the ``(cos, sin)`` pair is computed by the pipeline, see
:func:`kernel_cogvideo.embeddings.get_3d_rotary_pos_embed`).

``forward(hidden_states (B, F, C, H, W), encoder_hidden_states (B, S, text_embed_dim), timestep (B,))``
-> ``sample (B, F, out_channels, H, W)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel_flux.rotary import apply_rotary_emb
from kernel_layers.activations import FeedForward
from kernel_layers.attention import Attention
from kernel_layers.embeddings import TimestepEmbedding, Timesteps
from kernel_layers.joint_attention import BackendOptions, JointAttentionSwitches
from kernel_layers.normalization import AdaLayerNorm
from kernel_layers.transformer_2d import Transformer2DModelOutput

from kernel_cogvideo.embeddings import CogVideoXPatchEmbed


class CogVideoXAttnProcessor(BackendOptions):
    """Self-attention over ``[text, video]``; rotary embeddings rotate the video queries and keys only.

    Returns ``(video_out, text_out)``.
    """

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None, **kwargs: Any):
        n_text = encoder_hidden_states.shape[1]
        joined = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        q, k, v = attn.project_qkv(joined)
        q, k, v = attn.split_heads(q, attn.norm_q), attn.split_heads(k, attn.norm_k), attn.split_heads(v)
        if image_rotary_emb is not None:
            q = torch.cat([q[:, :, :n_text], apply_rotary_emb(q[:, :, n_text:], image_rotary_emb)], dim=2)
            k = torch.cat([k[:, :, :n_text], apply_rotary_emb(k[:, :, n_text:], image_rotary_emb)], dim=2)
        out = attn.attend(q, k, v, attention_mask, backend=self.backend, slice_size=self.slice_size)
        out = attn.to_out[1](attn.to_out[0](attn.merge_heads(out)))
        return out[:, n_text:], out[:, :n_text]


# Diffusers' names for the same processor.
CogVideoXAttnProcessor2_0 = CogVideoXAttnProcessor
FusedCogVideoXAttnProcessor2_0 = CogVideoXAttnProcessor


class CogVideoXLayerNormZero(nn.Module):
    """One LayerNorm, two modulations: ``(video, text, video_gate, text_gate)`` from a ``(B, C)`` conditioning."""

    def __init__(self, conditioning_dim: int, embedding_dim: int, elementwise_affine: bool = True,
                 eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(conditioning_dim, 6 * embedding_dim, bias=bias)
        self.norm = nn.LayerNorm(embedding_dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor):
        shift, scale, gate, t_shift, t_scale, t_gate = self.linear(self.silu(temb))[:, None].chunk(6, dim=-1)
        video = self.norm(hidden_states) * (1 + scale) + shift
        text = self.norm(encoder_hidden_states) * (1 + t_scale) + t_shift
        return video, text, gate, t_gate


class CogVideoXBlock(nn.Module):
    """Expert-norm attention and feed-forward over ``[text, video]``; returns ``(video, text)``."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, time_embed_dim: int,
                 dropout: float = 0.0, activation_fn: str = "gelu-approximate", attention_bias: bool = False,
                 qk_norm: bool = True, norm_elementwise_affine: bool = True, norm_eps: float = 1e-5,
                 final_dropout: bool = True, ff_inner_dim: int | None = None, ff_bias: bool = True,
                 attention_out_bias: bool = True):
        super().__init__()
        self.norm1 = CogVideoXLayerNormZero(time_embed_dim, dim, norm_elementwise_affine, norm_eps)
        self.attn1 = Attention(query_dim=dim, dim_head=attention_head_dim, heads=num_attention_heads,
                               qk_norm="layer_norm" if qk_norm else None, eps=1e-6, bias=attention_bias,
                               out_bias=attention_out_bias, processor=CogVideoXAttnProcessor())
        self.norm2 = CogVideoXLayerNormZero(time_embed_dim, dim, norm_elementwise_affine, norm_eps)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn, final_dropout=final_dropout,
                              inner_dim=ff_inner_dim, bias=ff_bias)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_kwargs: dict[str, Any] | None = None):
        n_text = encoder_hidden_states.shape[1]
        video, text, gate, t_gate = self.norm1(hidden_states, encoder_hidden_states, temb)
        video, text = self.attn1(video, encoder_hidden_states=text, image_rotary_emb=image_rotary_emb,
                                 **(attention_kwargs or {}))
        hidden_states = hidden_states + gate * video
        encoder_hidden_states = encoder_hidden_states + t_gate * text
        video, text, gate, t_gate = self.norm2(hidden_states, encoder_hidden_states, temb)
        ff = self.ff(torch.cat([text, video], dim=1))
        return hidden_states + gate * ff[:, n_text:], encoder_hidden_states + t_gate * ff[:, :n_text]


class CogVideoXTransformer3DModel(JointAttentionSwitches, ModelMixin):
    """CogVideoX denoiser, with Diffusers' config keys and state-dict layout (see the module docstring)."""

    component_kind = "denoiser"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["CogVideoXBlock", "CogVideoXPatchEmbed"]
    _skip_layerwise_casting_patterns = ["patch_embed", "norm"]
    _attn_processor_cls = CogVideoXAttnProcessor

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 30,
        attention_head_dim: int = 64,
        in_channels: int = 16,
        out_channels: int | None = 16,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        time_embed_dim: int = 512,
        ofs_embed_dim: int | None = None,
        text_embed_dim: int = 4096,
        num_layers: int = 30,
        dropout: float = 0.0,
        attention_bias: bool = True,
        sample_width: int = 90,
        sample_height: int = 60,
        sample_frames: int = 49,
        patch_size: int = 2,
        patch_size_t: int | None = None,
        temporal_compression_ratio: int = 4,
        max_text_seq_length: int = 226,
        activation_fn: str = "gelu-approximate",
        timestep_activation_fn: str = "silu",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        spatial_interpolation_scale: float = 1.875,
        temporal_interpolation_scale: float = 1.0,
        use_rotary_positional_embeddings: bool = False,
        use_learned_positional_embeddings: bool = False,
        patch_bias: bool = True,
    ):
        super().__init__()
        if use_learned_positional_embeddings and not use_rotary_positional_embeddings:
            raise ValueError("use_learned_positional_embeddings=True needs use_rotary_positional_embeddings=True "
                             "(no CogVideoX checkpoint has learned embeddings without rotary ones)")
        inner_dim = num_attention_heads * attention_head_dim
        self.patch_embed = CogVideoXPatchEmbed(
            patch_size=patch_size, patch_size_t=patch_size_t, in_channels=in_channels, embed_dim=inner_dim,
            text_embed_dim=text_embed_dim, bias=patch_bias, sample_width=sample_width, sample_height=sample_height,
            sample_frames=sample_frames, temporal_compression_ratio=temporal_compression_ratio,
            max_text_seq_length=max_text_seq_length, spatial_interpolation_scale=spatial_interpolation_scale,
            temporal_interpolation_scale=temporal_interpolation_scale,
            use_positional_embeddings=not use_rotary_positional_embeddings,
            use_learned_positional_embeddings=use_learned_positional_embeddings)
        self.embedding_dropout = nn.Dropout(dropout)
        self.time_proj = Timesteps(inner_dim, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(inner_dim, time_embed_dim, timestep_activation_fn)
        self.ofs_proj = self.ofs_embedding = None
        if ofs_embed_dim:
            self.ofs_proj = Timesteps(ofs_embed_dim, flip_sin_to_cos, freq_shift)
            self.ofs_embedding = TimestepEmbedding(ofs_embed_dim, ofs_embed_dim, timestep_activation_fn)
        self.transformer_blocks = nn.ModuleList([
            CogVideoXBlock(inner_dim, num_attention_heads, attention_head_dim, time_embed_dim, dropout=dropout,
                           activation_fn=activation_fn, attention_bias=attention_bias,
                           norm_elementwise_affine=norm_elementwise_affine, norm_eps=norm_eps)
            for _ in range(num_layers)])
        self.norm_final = nn.LayerNorm(inner_dim, norm_eps, norm_elementwise_affine)
        self.norm_out = AdaLayerNorm(time_embed_dim, output_dim=2 * inner_dim,
                                     norm_elementwise_affine=norm_elementwise_affine, norm_eps=norm_eps, chunk_dim=1)
        out_channels = out_channels or in_channels
        self.proj_out = nn.Linear(inner_dim, patch_size * patch_size * (patch_size_t or 1) * out_channels)
        self.gradient_checkpointing = False

    def _run(self, block, x, context, temb, rope, kwargs):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return torch.utils.checkpoint.checkpoint(block, x, context, temb, rope, kwargs, use_reentrant=False)
        return block(x, context, temb, image_rotary_emb=rope, attention_kwargs=kwargs)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: int | float | torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        ofs: int | float | torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ):
        if hidden_states.ndim != 5:
            raise ValueError(f"hidden_states must be (batch, frames, channels, height, width), got shape "
                             f"{tuple(hidden_states.shape)}")
        b, f, _, h, w = hidden_states.shape
        p, pt = self.config.patch_size, self.config.patch_size_t
        if h % p or w % p or (pt is not None and f % pt):
            raise ValueError(f"latent height/width ({h}x{w}) must be multiples of patch_size={p}"
                             + ("" if pt is None else f" and frames ({f}) of patch_size_t={pt}"))
        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(b)
        emb = self.time_embedding(self.time_proj(timestep).to(hidden_states.dtype), timestep_cond)
        if self.ofs_embedding is not None:
            if ofs is None:
                raise ValueError("this model embeds an ofs value (ofs_embed_dim is set); pass ofs")
            ofs = torch.as_tensor(ofs, device=hidden_states.device)
            emb = emb + self.ofs_embedding(self.ofs_proj(ofs.expand(b) if ofs.ndim == 0 else ofs).to(hidden_states.dtype))

        tokens = self.embedding_dropout(self.patch_embed(encoder_hidden_states, hidden_states))
        n_text = encoder_hidden_states.shape[1]
        context, x = tokens[:, :n_text], tokens[:, n_text:]
        for block in self.transformer_blocks:
            x, context = self._run(block, x, context, emb, image_rotary_emb, attention_kwargs)
        x = self.proj_out(self.norm_out(self.norm_final(x), temb=emb))

        if pt is None:
            out = x.reshape(b, f, h // p, w // p, -1, p, p).permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
        else:
            out = x.reshape(b, f // pt, h // p, w // p, -1, pt, p, p)
            out = out.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)
