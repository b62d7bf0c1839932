"""``StableAudioDiTModel``: the diffusion transformer of Stable Audio Open (Evans et al. 2024,
arXiv:2407.14358, Sec. 3.2), with Diffusers' config keys and state-dict layout.

Latents ``(B, in_channels, T)`` become ``T`` tokens; one global token (the projected start/total
seconds plus the timestep embedding) is put in front.  Each block is pre-LayerNorm self-attention
with rotary embeddings on the first half of every head's channels, cross-attention to the text and
seconds tokens (grouped-query: ``num_key_value_attention_heads`` key/value heads), and a SwiGLU
feed-forward.  The global token is dropped at the end.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel_layers.activations import FeedForward
from kernel_layers.attention import Attention, AttentionMixin, BackendOptions, slice_sizes
from kernel_layers.transformer_2d import Transformer2DModelOutput


def stable_audio_rotary_embedding(dim: int, length: int, theta: float = 10000.0,
                                  device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` float32 tables ``(length, dim)`` for positions ``0..length-1`` (RoPE, Su et al.,
    arXiv:2104.09864), each frequency laid out twice in two halves (rotate-half layout)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
    angles = torch.outer(torch.arange(length, device=device), inv_freq)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1).float(), torch.cat([sin, sin], dim=-1).float()


def _rotate_leading(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate the first ``rotary`` width of ``x`` ``(B, H, S, D)`` (rotate-half pairs ``(i, i + d/2)``) in float32."""
    cos, sin = (t.to(x.device)[None, None] for t in rotary)
    width = cos.shape[-1]
    head, tail = x[..., :width].float(), x[..., width:]
    first, second = head.chunk(2, dim=-1)
    turned = torch.cat([-second, first], dim=-1)
    return torch.cat([(head * cos + turned * sin).to(x.dtype), tail], dim=-1)


class StableAudioAttnProcessor(BackendOptions):
    """Attention with partial rotary embeddings on the query (and the key, for self-attention) and
    grouped-query key/value heads.  ``rotary_emb``: ``(cos, sin)`` from :func:`stable_audio_rotary_embedding`.
    ``backend`` / ``slice_size`` choose the attention kernel as for the standard processor."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb=None) -> torch.Tensor:
        query, key, value = attn.project_qkv(hidden_states, encoder_hidden_states)
        query, key, value = attn.split_heads(query, attn.norm_q), attn.split_heads(key, attn.norm_k), \
            attn.split_heads(value)
        if rotary_emb is not None:
            query = _rotate_leading(query, rotary_emb)
            if not attn.is_cross_attention:
                key = _rotate_leading(key, rotary_emb)
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = attention_mask.bool()
        out = attn.merge_heads(attn.attend(query, key, value, attention_mask, backend=self.backend,
                                           slice_size=self.slice_size))
        return attn.to_out[1](attn.to_out[0](out))


class StableAudioDiTBlock(nn.Module):
    """Self-attention (rotary), cross-attention (grouped-query), SwiGLU feed-forward; pre-LayerNorm residuals."""

    def __init__(self, dim: int, num_attention_heads: int, num_key_value_attention_heads: int, attention_head_dim: int,
                 dropout: float = 0.0, cross_attention_dim: int | None = None, upcast_attention: bool = False,
                 norm_eps: float = 1e-5, ff_inner_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn1 = Attention(query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
                               bias=False, upcast_attention=upcast_attention, out_bias=False,
                               processor=StableAudioAttnProcessor())
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn2 = Attention(query_dim=dim, cross_attention_dim=cross_attention_dim, heads=num_attention_heads,
                               dim_head=attention_head_dim, kv_heads=num_key_value_attention_heads, dropout=dropout,
                               bias=False, upcast_attention=upcast_attention, out_bias=False,
                               processor=StableAudioAttnProcessor())
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn="swiglu", final_dropout=False,
                              inner_dim=ff_inner_dim, bias=True)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                rotary_embedding=None) -> torch.Tensor:
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states), attention_mask=attention_mask,
                                                   rotary_emb=rotary_embedding)
        hidden_states = hidden_states + self.attn2(self.norm2(hidden_states),
                                                   encoder_hidden_states=encoder_hidden_states,
                                                   attention_mask=encoder_attention_mask)
        return hidden_states + self.ff(self.norm3(hidden_states))


class StableAudioGaussianFourierProjection(nn.Module):
    """Timesteps ``(B,)`` -> ``[cos(2 pi t w), sin(2 pi t w)]`` ``(B, 2 * embedding_size)`` with fixed random ``w``."""

    def __init__(self, embedding_size: int = 256, scale: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * t[:, None] @ self.weight[None, :]
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


class StableAudioDiTModel(ModelMixin, AttentionMixin):
    """The Stable Audio diffusion transformer (see the module docstring).

    ``forward(hidden_states (B, in_channels, T), timestep (B,) or (1,), encoder_hidden_states
    (B, S, cross_attention_input_dim), global_hidden_states (B, 1, global_states_input_dim),
    rotary_embedding)`` -> ``(B, out_channels, T)``.
    """

    component_kind = "denoiser"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["StableAudioDiTBlock"]
    _repeated_blocks = ["StableAudioDiTBlock"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 1024,
        in_channels: int = 64,
        num_layers: int = 24,
        attention_head_dim: int = 64,
        num_attention_heads: int = 24,
        num_key_value_attention_heads: int = 12,
        out_channels: int = 64,
        cross_attention_dim: int = 768,
        time_proj_dim: int = 256,
        global_states_input_dim: int = 1536,
        cross_attention_input_dim: int = 768,
    ):
        super().__init__()
        if num_attention_heads % num_key_value_attention_heads:
            raise ValueError(f"num_attention_heads={num_attention_heads} must be a multiple of "
                             f"num_key_value_attention_heads={num_key_value_attention_heads} (grouped-query attention)")
        self.sample_size = sample_size
        self.out_channels = out_channels
        self.inner_dim = inner = num_attention_heads * attention_head_dim
        self.time_proj = StableAudioGaussianFourierProjection(embedding_size=time_proj_dim // 2)
        self.timestep_proj = nn.Sequential(nn.Linear(time_proj_dim, inner), nn.SiLU(), nn.Linear(inner, inner))
        self.global_proj = nn.Sequential(nn.Linear(global_states_input_dim, inner, bias=False), nn.SiLU(),
                                         nn.Linear(inner, inner, bias=False))
        self.cross_attention_proj = nn.Sequential(
            nn.Linear(cross_attention_input_dim, cross_attention_dim, bias=False), nn.SiLU(),
            nn.Linear(cross_attention_dim, cross_attention_dim, bias=False))
        self.preprocess_conv = nn.Conv1d(in_channels, in_channels, 1, bias=False)
        self.proj_in = nn.Linear(in_channels, inner, bias=False)
        self.transformer_blocks = nn.ModuleList(
            StableAudioDiTBlock(dim=inner, num_attention_heads=num_attention_heads,
                                num_key_value_attention_heads=num_key_value_attention_heads,
                                attention_head_dim=attention_head_dim, cross_attention_dim=cross_attention_dim)
            for _ in range(num_layers))
        self.proj_out = nn.Linear(inner, out_channels, bias=False)
        self.postprocess_conv = nn.Conv1d(out_channels, out_channels, 1, bias=False)
        self.gradient_checkpointing = False

    # The model-wide attention switches keep the rotary-aware processor (the standard one would drop the rotation).
    def set_default_attn_processor(self) -> None:
        self.set_attn_processor(StableAudioAttnProcessor())

    def set_attention_backend(self, backend: str | None) -> None:
        self.set_attn_processor(StableAudioAttnProcessor(backend=backend))

    def enable_xformers_memory_efficient_attention(self, attention_op=None) -> None:
        self.set_attention_backend("xformers")

    def set_attention_slice(self, slice_size="auto") -> None:
        layers = [m for _, m in self._attention_layers()]
        for size, module in zip(slice_sizes(slice_size, [m.sliceable_head_dim for m in layers]), layers):
            module.set_processor(StableAudioAttnProcessor(backend="sliced" if size else None, slice_size=size))

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor = None,
        encoder_hidden_states: torch.Tensor = None,
        global_hidden_states: torch.Tensor = None,
        rotary_embedding: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_dict: bool = True,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ):
        context = self.cross_attention_proj(encoder_hidden_states)
        timestep = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1)
        time = self.timestep_proj(self.time_proj(timestep.to(self.dtype)))
        global_token = self.global_proj(global_hidden_states) + time.unsqueeze(1)

        x = (self.preprocess_conv(hidden_states) + hidden_states).transpose(1, 2)
        x = torch.cat([global_token, self.proj_in(x)], dim=-2)
        if attention_mask is not None:
            keep = torch.ones((x.shape[0], 1), device=x.device, dtype=torch.bool)
            attention_mask = torch.cat([keep, attention_mask.bool()], dim=-1)
        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = torch.utils.checkpoint.checkpoint(block, x, attention_mask, context, encoder_attention_mask,
                                                      rotary_embedding, use_reentrant=False)
            else:
                x = block(x, attention_mask=attention_mask, encoder_hidden_states=context,
                          encoder_attention_mask=encoder_attention_mask, rotary_embedding=rotary_embedding)
        x = self.proj_out(x).transpose(1, 2)[:, :, 1:]
        x = self.postprocess_conv(x) + x
        return Transformer2DModelOutput(sample=x) if return_dict else (x,)
