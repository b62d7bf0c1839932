"""The Kandinsky 3 UNet (Arkhipkin et al., arXiv:2312.03511), with Diffusers' config keys and weight names.

Every level is a stack of bottleneck ResNets (1x1 -> 3x3 -> 3x3 -> 1x1 convolutions, each preceded by a
group norm whose scale and shift come from the time embedding) interleaved with cross-attention to the
projected T5 tokens; levels after the first also start (down path) or end (up path) with a
self-attention block.  Down-sampling is a stride-2 convolution inside the last ResNet of a level,
up-sampling a stride-2 transposed convolution inside the first ResNet of a level.  The time embedding is
enriched with an attention pooling of the text tokens (query: their mean).

Text masks are keep-masks ``(B, S)`` (1 = real token), turned into additive ``-10000`` biases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel_layers.attention import Attention, AttentionMixin
from kernel_layers.embeddings import TimestepEmbedding, Timesteps

# Not configurable in Diffusers either: fixed by the released architecture.
_EXPANSION, _COMPRESSION = 4, 2
_WITH_ATTENTION = (False, True, True, True)


@dataclass
class Kandinsky3UNetOutput(BaseOutput):
    """``sample``: the predicted noise, shaped like the input latents."""

    sample: torch.Tensor = None


class Kandinsky3EncoderProj(nn.Module):
    """Text tokens -> cross-attention width: bias-free linear then layer norm."""

    def __init__(self, encoder_hid_dim: int, cross_attention_dim: int):
        super().__init__()
        self.projection_linear = nn.Linear(encoder_hid_dim, cross_attention_dim, bias=False)
        self.projection_norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_norm(self.projection_linear(x))


class Kandinsky3ConditionalGroupNorm(nn.Module):
    """Affine-free group norm modulated by ``(1 + scale, shift)`` predicted from a condition vector."""

    def __init__(self, groups: int, normalized_shape: int, context_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, normalized_shape, affine=False)
        self.context_mlp = nn.Sequential(nn.SiLU(), nn.Linear(context_dim, 2 * normalized_shape))
        nn.init.zeros_(self.context_mlp[1].weight)
        nn.init.zeros_(self.context_mlp[1].bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        modulation = self.context_mlp(context).reshape(*context.shape[:1], -1, *([1] * (x.ndim - 2)))
        scale, shift = modulation.chunk(2, dim=1)
        return self.norm(x) * (1.0 + scale) + shift


class Kandinsky3Block(nn.Module):
    """Conditional norm -> SiLU -> [transposed-conv x2 up] -> conv -> [stride-2 conv down].

    ``up_resolution``: ``True`` up-samples, ``False`` down-samples, ``None`` keeps the size.
    """

    def __init__(self, in_channels: int, out_channels: int, time_embed_dim: int, kernel_size: int = 3,
                 norm_groups: int = 32, up_resolution: bool | None = None):
        super().__init__()
        self.group_norm = Kandinsky3ConditionalGroupNorm(norm_groups, in_channels, time_embed_dim)
        self.activation = nn.SiLU()
        self.up_sample = (nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2)
                          if up_resolution is True else nn.Identity())
        self.projection = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size,
                                    padding=1 if kernel_size > 1 else 0)
        self.down_sample = (nn.Conv2d(out_channels, out_channels, kernel_size=2, stride=2)
                            if up_resolution is False else nn.Identity())

    def forward(self, x: torch.Tensor, time_embed: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.group_norm(x, time_embed))
        return self.down_sample(self.projection(self.up_sample(x)))


class Kandinsky3ResNetBlock(nn.Module):
    """Bottleneck ResNet of four :class:`Kandinsky3Block` (kernels 1, 3, 3, 1) with a matching shortcut."""

    def __init__(self, in_channels: int, out_channels: int, time_embed_dim: int, norm_groups: int = 32,
                 compression_ratio: int = 2, up_resolutions: tuple = (None, None, None, None)):
        super().__init__()
        hidden = max(in_channels, out_channels) // compression_ratio
        dims = [(in_channels, hidden), (hidden, hidden), (hidden, hidden), (hidden, out_channels)]
        self.resnet_blocks = nn.ModuleList([
            Kandinsky3Block(i, o, time_embed_dim, k, norm_groups, r)
            for (i, o), k, r in zip(dims, (1, 3, 3, 1), up_resolutions)
        ])
        ups = [r is True for r in up_resolutions]
        downs = [r is False for r in up_resolutions]
        self.shortcut_up_sample = (nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2)
                                   if any(ups) else nn.Identity())
        self.shortcut_projection = (nn.Conv2d(in_channels, out_channels, kernel_size=1)
                                    if in_channels != out_channels else nn.Identity())
        self.shortcut_down_sample = (nn.Conv2d(out_channels, out_channels, kernel_size=2, stride=2)
                                     if any(downs) else nn.Identity())

    def forward(self, x: torch.Tensor, time_embed: torch.Tensor) -> torch.Tensor:
        out = x
        for block in self.resnet_blocks:
            out = block(out, time_embed)
        return self.shortcut_down_sample(self.shortcut_projection(self.shortcut_up_sample(x))) + out


class Kandinsky3AttentionPooling(nn.Module):
    """Adds to the time embedding an attention read-out of the text tokens (query: their mean)."""

    def __init__(self, num_channels: int, context_dim: int, head_dim: int = 64):
        super().__init__()
        self.attention = Attention(context_dim, context_dim, dim_head=head_dim, out_dim=num_channels, out_bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        if context_mask is not None:
            context_mask = context_mask.to(context.dtype)
        pooled = self.attention(context.mean(dim=1, keepdim=True), context, context_mask)
        return x + pooled.squeeze(1)


class Kandinsky3AttentionBlock(nn.Module):
    """Pre-norm (cross- or self-) attention over pixels, then a 1x1-conv feed-forward; both residual."""

    def __init__(self, num_channels: int, time_embed_dim: int, context_dim: int | None = None, norm_groups: int = 32,
                 head_dim: int = 64, expansion_ratio: int = 4):
        super().__init__()
        self.in_norm = Kandinsky3ConditionalGroupNorm(norm_groups, num_channels, time_embed_dim)
        self.attention = Attention(num_channels, context_dim or num_channels, dim_head=head_dim,
                                   out_dim=num_channels, out_bias=False)
        hidden = expansion_ratio * num_channels
        self.out_norm = Kandinsky3ConditionalGroupNorm(norm_groups, num_channels, time_embed_dim)
        self.feed_forward = nn.Sequential(
            nn.Conv2d(num_channels, hidden, kernel_size=1, bias=False), nn.SiLU(),
            nn.Conv2d(hidden, num_channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor, time_embed: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.in_norm(x, time_embed).reshape(b, c, h * w).transpose(1, 2)
        if context is None:
            context = tokens
        if context_mask is not None:
            context_mask = context_mask.to(context.dtype)
        out = self.attention(tokens, context, context_mask)
        x = x + out.transpose(1, 2).reshape(b, c, h, w)
        return x + self.feed_forward(self.out_norm(x, time_embed))


class _Kandinsky3Level(nn.Module):
    """Shared layout of a level: ``attentions[0]`` is the self-attention (or identity), ``attentions[i+1]``
    the cross-attention between ``resnets_in[i]`` and ``resnets_out[i]``."""

    def _build(self, dims, resolutions_in, resolutions_out, attn_channels, time_embed_dim, context_dim, groups,
               head_dim, expansion_ratio, compression_ratio, self_attention, self_channels, widen_first):
        self.self_attention = self_attention
        self.context_dim = context_dim
        attentions = [Kandinsky3AttentionBlock(self_channels, time_embed_dim, None, groups, head_dim, expansion_ratio)
                      if self_attention else nn.Identity()]
        resnets_in, resnets_out = [], []
        for (i, o), r_in, r_out, a in zip(dims, resolutions_in, resolutions_out, attn_channels):
            # Down levels change the width in resnets_in, up levels in resnets_out.
            res_in_out = (i, o) if widen_first else (i, i)
            resnets_in.append(Kandinsky3ResNetBlock(*res_in_out, time_embed_dim, groups, compression_ratio,
                                                    r_in or (None,) * 4))
            attentions.append(Kandinsky3AttentionBlock(a, time_embed_dim, context_dim, groups, head_dim, expansion_ratio)
                              if context_dim is not None else nn.Identity())
            res_out_io = (o, o) if widen_first else (i, o)
            resnets_out.append(Kandinsky3ResNetBlock(*res_out_io, time_embed_dim, groups, compression_ratio,
                                                     r_out or (None,) * 4))
        self.attentions = nn.ModuleList(attentions)
        self.resnets_in = nn.ModuleList(resnets_in)
        self.resnets_out = nn.ModuleList(resnets_out)

    def _stack(self, x, time_embed, context, context_mask, image_mask):
        for attention, resnet_in, resnet_out in zip(self.attentions[1:], self.resnets_in, self.resnets_out):
            x = resnet_in(x, time_embed)
            if self.context_dim is not None:
                x = attention(x, time_embed, context, context_mask, image_mask)
            x = resnet_out(x, time_embed)
        return x


class Kandinsky3DownSampleBlock(_Kandinsky3Level):
    """[self-attention] then ``num_blocks`` x (ResNet, cross-attention, ResNet); the last ResNet halves the size."""

    def __init__(self, in_channels, out_channels, time_embed_dim, context_dim=None, num_blocks=3, groups=32,
                 head_dim=64, expansion_ratio=4, compression_ratio=2, down_sample=True, self_attention=True):
        super().__init__()
        dims = [(in_channels, out_channels)] + [(out_channels, out_channels)] * (num_blocks - 1)
        last = (None, None, False if down_sample else None, None)
        self._build(dims, [None] * num_blocks, [None] * (num_blocks - 1) + [last], [out_channels] * num_blocks,
                    time_embed_dim, context_dim, groups, head_dim, expansion_ratio, compression_ratio,
                    self_attention, in_channels, widen_first=True)

    def forward(self, x, time_embed, context=None, context_mask=None, image_mask=None) -> torch.Tensor:
        if self.self_attention:
            x = self.attentions[0](x, time_embed, image_mask=image_mask)
        return self._stack(x, time_embed, context, context_mask, image_mask)


class Kandinsky3UpSampleBlock(_Kandinsky3Level):
    """``num_blocks`` x (ResNet, cross-attention, ResNet) then [self-attention]; the first ResNet doubles the size
    and takes the skip connection (``cat_dim`` extra channels)."""

    def __init__(self, in_channels, cat_dim, out_channels, time_embed_dim, context_dim=None, num_blocks=3, groups=32,
                 head_dim=64, expansion_ratio=4, compression_ratio=2, up_sample=True, self_attention=True):
        super().__init__()
        dims = ([(in_channels + cat_dim, in_channels)] + [(in_channels, in_channels)] * (num_blocks - 2)
                + [(in_channels, out_channels)])
        first = (None, True if up_sample else None, None, None)
        resolutions_in = [first] + [(None,) * 4] * (num_blocks - 1)
        self._build(dims, resolutions_in, [None] * num_blocks, [i for i, _ in dims], time_embed_dim, context_dim,
                    groups, head_dim, expansion_ratio, compression_ratio, self_attention, out_channels,
                    widen_first=False)

    def forward(self, x, time_embed, context=None, context_mask=None, image_mask=None) -> torch.Tensor:
        x = self._stack(x, time_embed, context, context_mask, image_mask)
        if self.self_attention:
            x = self.attentions[0](x, time_embed, image_mask=image_mask)
        return x


class Kandinsky3UNet(ModelMixin, AttentionMixin):
    """Kandinsky 3 noise predictor; ``forward(sample, timestep, encoder_hidden_states, encoder_attention_mask)``."""

    _no_split_modules = ["Kandinsky3DownSampleBlock", "Kandinsky3UpSampleBlock"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        time_embedding_dim: int = 1536,
        groups: int = 32,
        attention_head_dim: int = 64,
        layers_per_block: int | tuple[int] = 3,
        block_out_channels: tuple[int, ...] = (384, 768, 1536, 3072),
        cross_attention_dim: int | tuple[int] = 4096,
        encoder_hid_dim: int = 4096,
    ):
        super().__init__()
        if not isinstance(layers_per_block, int) or layers_per_block < 2:
            raise ValueError(f"layers_per_block must be an int >= 2 (the released model uses 3), got {layers_per_block!r}")
        if not 1 <= len(block_out_channels) <= len(_WITH_ATTENTION):
            raise ValueError(f"block_out_channels must have 1 to {len(_WITH_ATTENTION)} entries, got {block_out_channels!r}")
        if not isinstance(cross_attention_dim, int):
            raise ValueError(f"cross_attention_dim must be an int, got {cross_attention_dim!r}")
        init_channels = block_out_channels[0] // 2
        self.time_proj = Timesteps(init_channels, flip_sin_to_cos=False, downscale_freq_shift=1)
        self.time_embedding = TimestepEmbedding(init_channels, time_embedding_dim)
        self.add_time_condition = Kandinsky3AttentionPooling(time_embedding_dim, cross_attention_dim, attention_head_dim)
        self.conv_in = nn.Conv2d(in_channels, init_channels, kernel_size=3, padding=1)
        self.encoder_hid_proj = Kandinsky3EncoderProj(encoder_hid_dim, cross_attention_dim)

        widths = [init_channels, *block_out_channels]
        pairs = list(zip(widths[:-1], widths[1:]))
        self.num_levels = len(pairs)
        text_dims = [cross_attention_dim if a else None for a in _WITH_ATTENTION]
        common = dict(groups=groups, head_dim=attention_head_dim, expansion_ratio=_EXPANSION,
                      compression_ratio=_COMPRESSION)
        self.down_blocks = nn.ModuleList([
            Kandinsky3DownSampleBlock(i, o, time_embedding_dim, text_dims[level], layers_per_block,
                                      down_sample=level != self.num_levels - 1, self_attention=_WITH_ATTENTION[level],
                                      **common)
            for level, (i, o) in enumerate(pairs)
        ])
        skips = [o if level != self.num_levels - 1 else 0 for level, (_, o) in enumerate(pairs)]
        # As in the released model (and Diffusers), the up path reads the attention flags from the END of the
        # four-entry table whatever the number of levels: with fewer than four levels every up level attends.
        up_flags = _WITH_ATTENTION[::-1]
        self.up_blocks = nn.ModuleList([
            Kandinsky3UpSampleBlock(i, skips[rev], o, time_embedding_dim,
                                    cross_attention_dim if up_flags[level] else None, layers_per_block,
                                    up_sample=level != 0, self_attention=up_flags[level], **common)
            for level, (rev, (o, i)) in enumerate(reversed(list(enumerate(pairs))))
        ])
        self.conv_norm_out = nn.GroupNorm(groups, init_channels)
        self.conv_act_out = nn.SiLU()
        self.conv_out = nn.Conv2d(init_channels, in_channels, kernel_size=3, padding=1)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, return_dict: bool = True):
        if encoder_hidden_states is None:
            raise ValueError("encoder_hidden_states is required: Kandinsky3UNet is text-conditioned (B, S, encoder_hid_dim)")
        bias = None
        if encoder_attention_mask is not None:
            bias = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.float32 if isinstance(timestep, float) else torch.int32,
                                    device=sample.device)
        elif timestep.ndim == 0:
            timestep = timestep[None].to(sample.device)
        time_embed = self.time_embedding(self.time_proj(timestep.expand(sample.shape[0])).to(sample.dtype))
        context = self.encoder_hid_proj(encoder_hidden_states)
        time_embed = self.add_time_condition(time_embed, context, bias)

        skips = []
        x = self.conv_in(sample)
        for level, block in enumerate(self.down_blocks):
            x = block(x, time_embed, context, bias)
            if level != self.num_levels - 1:
                skips.append(x)
        for level, block in enumerate(self.up_blocks):
            if level != 0:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, time_embed, context, bias)
        x = self.conv_out(self.conv_act_out(self.conv_norm_out(x)))
        if not return_dict:
            return (x,)
        return Kandinsky3UNetOutput(sample=x)
