"""The Stable Cascade UNet (Pernias et al., Würstchen, arXiv:2306.00637), with Diffusers' config keys and weights.

One class serves both denoising stages: stage C (the "prior", text -> 16-channel image embedding at a 42x
compression) and stage B (the "decoder", stage C's embedding -> 4-channel Paella VQ latents).

The network is a UNet of ConvNeXt-style levels.  Every level repeats a layer pattern of

* a residual block: depthwise convolution, channel layer norm, then a channel MLP (linear, GELU, global
  response norm, dropout, linear) that also reads the skip connection on the first block of an up level;
* a timestep block: ``x * (1 + a) + b`` with ``(a, b)`` the sum of one linear map per conditioning scalar
  (the timestep ratio, then ``timestep_conditioning_type``: ``sca``, ``crp``), each embedded sinusoidally;
* an attention block: layer norm, then attention whose keys/values are the level's own tokens (when
  ``self_attn``) followed by the mapped CLIP conditioning tokens.

A level's pattern may run several times (``*_blocks_repeat_mappers``) with a 1x1 convolution in between.
Levels are joined by a stride-2 convolution / transposed convolution, or with ``switch_level`` by a 1x1
convolution and a bilinear resize (optionally disabled per level).  Stage B adds a mapped EfficientNet
feature map (``effnet``) and a mapped pixel hint (``pixels``, zeros by default) to the embedded input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel_layers.attention import Attention, AttentionMixin
from kernel_layers.blocks_2d import run_checkpointed

_BLOCK_TYPES = ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock")


@dataclass
class StableCascadeUNetOutput(BaseOutput):
    """``sample``: the prediction, shaped like the input."""

    sample: torch.Tensor = None


class SDCascadeLayerNorm(nn.LayerNorm):
    """Layer norm over the channel axis of a ``(B, C, H, W)`` map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def _channel_norm(channels: int) -> SDCascadeLayerNorm:
    return SDCascadeLayerNorm(channels, elementwise_affine=False, eps=1e-6)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2 global response normalisation on channels-last maps ``(B, H, W, C)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        relative = spatial / (spatial.mean(dim=-1, keepdim=True) + 1e-6)
        return x + self.gamma * (x * relative) + self.beta


class SDCascadeResBlock(nn.Module):
    """Depthwise conv + channel norm + channel MLP (optionally fed a skip map), with a residual."""

    def __init__(self, c: int, c_skip: int = 0, kernel_size: int = 3, dropout: float = 0.0):
        super().__init__()
        self.depthwise = nn.Conv2d(c, c, kernel_size=kernel_size, padding=kernel_size // 2, groups=c)
        self.norm = _channel_norm(c)
        self.channelwise = nn.Sequential(nn.Linear(c + c_skip, c * 4), nn.GELU(), GlobalResponseNorm(c * 4),
                                         nn.Dropout(dropout), nn.Linear(c * 4, c))

    def forward(self, x: torch.Tensor, x_skip: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(self.depthwise(x))
        if x_skip is not None:
            h = torch.cat([h, x_skip], dim=1)
        return x + self.channelwise(h.movedim(1, -1)).movedim(-1, 1)


class SDCascadeTimestepBlock(nn.Module):
    """Scale and shift from the concatenated ``[ratio, *conds]`` embeddings, one linear map per part."""

    def __init__(self, c: int, c_timestep: int, conds: tuple[str, ...] = ()):
        super().__init__()
        self.conds = tuple(conds)
        self.mapper = nn.Linear(c_timestep, c * 2)
        for name in self.conds:
            setattr(self, f"mapper_{name}", nn.Linear(c_timestep, c * 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        parts = t.chunk(len(self.conds) + 1, dim=1)
        mods = self.mapper(parts[0])
        for name, part in zip(self.conds, parts[1:]):
            mods = mods + getattr(self, f"mapper_{name}")(part)
        scale, shift = mods[:, :, None, None].chunk(2, dim=1)
        return x * (1 + scale) + shift


class SDCascadeAttnBlock(nn.Module):
    """Pre-norm attention to ``[own tokens (if self_attn), mapped conditioning tokens]`` with a residual."""

    def __init__(self, c: int, c_cond: int, nhead: int, self_attn: bool = True, dropout: float = 0.0):
        super().__init__()
        self.self_attn = self_attn
        self.norm = _channel_norm(c)
        self.attention = Attention(query_dim=c, heads=nhead, dim_head=c // nhead, dropout=dropout, bias=True)
        self.kv_mapper = nn.Sequential(nn.SiLU(), nn.Linear(c_cond, c))

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kv = self.kv_mapper(kv)
        h = self.norm(x)
        if self.self_attn:
            kv = torch.cat([h.flatten(2).transpose(1, 2), kv], dim=1)
        return x + self.attention(h, encoder_hidden_states=kv)


class UpDownBlock2d(nn.Module):
    """1x1 convolution and a bilinear x2 / x0.5 resize (resize after the conv going down, before going up)."""

    def __init__(self, in_channels: int, out_channels: int, mode: str, enabled: bool = True):
        super().__init__()
        if mode not in ("up", "down"):
            raise ValueError(f"mode must be 'up' or 'down', got {mode!r}")
        resize = (nn.Upsample(scale_factor=2 if mode == "up" else 0.5, mode="bilinear", align_corners=True)
                  if enabled else nn.Identity())
        conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.blocks = nn.ModuleList([resize, conv] if mode == "up" else [conv, resize])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _mapper(in_channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, width * 4, kernel_size=1), nn.GELU(),
                         nn.Conv2d(width * 4, width, kernel_size=1), _channel_norm(width))


def _per_level(value, n: int, name: str) -> tuple:
    if isinstance(value, (bool, int, float)):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"{name} must have one entry per level ({n}), got {value!r}")
    return value


class StableCascadeUNet(ModelMixin, AttentionMixin):
    """Stable Cascade stage B / C denoiser.

    ``forward(sample, timestep_ratio, clip_text_pooled, clip_text=None, clip_img=None, effnet=None,
    pixels=None, sca=None, crp=None, return_dict=True)``; ``timestep_ratio`` is ``(B,)`` in ``[0, 1]``.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["SDCascadeResBlock", "SDCascadeAttnBlock"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 16,
        out_channels: int = 16,
        timestep_ratio_embedding_dim: int = 64,
        patch_size: int = 1,
        conditioning_dim: int = 2048,
        block_out_channels: tuple[int, ...] = (2048, 2048),
        num_attention_heads: tuple[int, ...] = (32, 32),
        down_num_layers_per_block: tuple[int, ...] = (8, 24),
        up_num_layers_per_block: tuple[int, ...] = (24, 8),
        down_blocks_repeat_mappers: tuple[int, ...] | None = (1, 1),
        up_blocks_repeat_mappers: tuple[int, ...] | None = (1, 1),
        block_types_per_layer: tuple[tuple[str, ...], ...] = (_BLOCK_TYPES, _BLOCK_TYPES),
        clip_text_in_channels: int | None = None,
        clip_text_pooled_in_channels: int = 1280,
        clip_image_in_channels: int | None = None,
        clip_seq: int = 4,
        effnet_in_channels: int | None = None,
        pixel_mapper_in_channels: int | None = None,
        kernel_size: int = 3,
        dropout: float | tuple[float, ...] = (0.1, 0.1),
        self_attn: bool | tuple[bool, ...] = True,
        timestep_conditioning_type: tuple[str, ...] = ("sca", "crp"),
        switch_level: tuple[bool, ...] | None = None,
    ):
        super().__init__()
        n = len(block_out_channels)
        heads = _per_level(num_attention_heads, n, "num_attention_heads")
        down_layers = _per_level(down_num_layers_per_block, n, "down_num_layers_per_block")
        up_layers = _per_level(up_num_layers_per_block, n, "up_num_layers_per_block")
        down_repeats = _per_level(down_blocks_repeat_mappers or (1,) * n, n, "down_blocks_repeat_mappers")
        up_repeats = _per_level(up_blocks_repeat_mappers or (1,) * n, n, "up_blocks_repeat_mappers")
        if len(block_types_per_layer) != n:
            raise ValueError(f"block_types_per_layer must have one entry per level ({n}), got {block_types_per_layer!r}")
        for types in block_types_per_layer:
            for kind in types:
                if kind not in _BLOCK_TYPES:
                    raise ValueError(f"block_types_per_layer: unknown block type {kind!r}; accepted: {_BLOCK_TYPES}")
        dropout = _per_level(dropout, n, "dropout")
        self_attn = _per_level(self_attn, n, "self_attn")
        if switch_level is not None and len(switch_level) != n - 1:
            raise ValueError(f"switch_level must have one entry per level transition ({n - 1}), got {switch_level!r}")

        first = block_out_channels[0]
        if effnet_in_channels is not None:
            self.effnet_mapper = _mapper(effnet_in_channels, first)
        if pixel_mapper_in_channels is not None:
            self.pixels_mapper = _mapper(pixel_mapper_in_channels, first)
        self.clip_txt_pooled_mapper = nn.Linear(clip_text_pooled_in_channels, conditioning_dim * clip_seq)
        if clip_text_in_channels is not None:
            self.clip_txt_mapper = nn.Linear(clip_text_in_channels, conditioning_dim)
        if clip_image_in_channels is not None:
            self.clip_img_mapper = nn.Linear(clip_image_in_channels, conditioning_dim * clip_seq)
        self.clip_norm = nn.LayerNorm(conditioning_dim, elementwise_affine=False, eps=1e-6)
        self.embedding = nn.Sequential(nn.PixelUnshuffle(patch_size),
                                       nn.Conv2d(in_channels * patch_size**2, first, kernel_size=1),
                                       _channel_norm(first))

        def make(kind: str, level: int, c_skip: int = 0) -> nn.Module:
            width = block_out_channels[level]
            if kind == "SDCascadeResBlock":
                return SDCascadeResBlock(width, c_skip, kernel_size=kernel_size, dropout=dropout[level])
            if kind == "SDCascadeTimestepBlock":
                return SDCascadeTimestepBlock(width, timestep_ratio_embedding_dim, conds=timestep_conditioning_type)
            return SDCascadeAttnBlock(width, conditioning_dim, heads[level], self_attn=self_attn[level],
                                      dropout=dropout[level])

        def join(level_from: int, level_to: int, mode: str) -> nn.Module:
            c_in, c_out = block_out_channels[level_from], block_out_channels[level_to]
            if switch_level is not None:
                resize = UpDownBlock2d(c_in, c_out, mode=mode, enabled=switch_level[min(level_from, level_to)])
            elif mode == "down":
                resize = nn.Conv2d(c_in, c_out, kernel_size=2, stride=2)
            else:
                resize = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
            return nn.Sequential(_channel_norm(c_in), resize)

        self.down_blocks, self.down_downscalers, self.down_repeat_mappers = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in range(n):
            self.down_downscalers.append(join(level - 1, level, "down") if level else nn.Identity())
            self.down_blocks.append(nn.ModuleList(
                make(kind, level) for _ in range(down_layers[level]) for kind in block_types_per_layer[level]))
            self.down_repeat_mappers.append(nn.ModuleList(
                nn.Conv2d(block_out_channels[level], block_out_channels[level], kernel_size=1)
                for _ in range(down_repeats[level] - 1)))

        # Up levels run deepest first; ``up_num_layers_per_block`` / ``up_blocks_repeat_mappers`` list them in
        # that order.  The first block of every up level but the deepest reads the matching down level's output.
        self.up_blocks, self.up_upscalers, self.up_repeat_mappers = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for position, level in enumerate(reversed(range(n))):
            self.up_upscalers.append(join(level, level - 1, "up") if level else nn.Identity())
            blocks = nn.ModuleList()
            for j in range(up_layers[position]):
                for k, kind in enumerate(block_types_per_layer[level]):
                    c_skip = block_out_channels[level] if level < n - 1 and j == 0 and k == 0 else 0
                    blocks.append(make(kind, level, c_skip))
            self.up_blocks.append(blocks)
            self.up_repeat_mappers.append(nn.ModuleList(
                nn.Conv2d(block_out_channels[level], block_out_channels[level], kernel_size=1)
                for _ in range(up_repeats[position] - 1)))

        self.clf = nn.Sequential(_channel_norm(first), nn.Conv2d(first, out_channels * patch_size**2, kernel_size=1),
                                 nn.PixelShuffle(patch_size))
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ conditioning
    def get_timestep_ratio_embedding(self, timestep_ratio: torch.Tensor, max_positions: int = 10000) -> torch.Tensor:
        """Sinusoidal embedding ``[sin, cos]`` of ``timestep_ratio * max_positions`` (zero-padded to an odd size)."""
        dim = self.config.timestep_ratio_embedding_dim
        half = dim // 2
        r = timestep_ratio * max_positions
        freqs = torch.exp(torch.arange(half, device=r.device).float() * -(math.log(max_positions) / (half - 1)))
        angles = r[:, None] * freqs[None, :]
        emb = torch.cat([angles.sin(), angles.cos()], dim=1)
        if dim % 2:
            emb = F.pad(emb, (0, 1))
        return emb.to(r.dtype)

    def get_clip_embeddings(self, clip_txt_pooled: torch.Tensor, clip_txt: torch.Tensor | None = None,
                            clip_img: torch.Tensor | None = None) -> torch.Tensor:
        """Conditioning tokens: ``[text tokens, pooled text, image]`` (text and image only when both are given)."""
        seq = self.config.clip_seq
        if clip_txt_pooled.ndim == 2:
            clip_txt_pooled = clip_txt_pooled[:, None]
        batch = clip_txt_pooled.shape[0]
        pooled = self.clip_txt_pooled_mapper(clip_txt_pooled).reshape(batch, clip_txt_pooled.shape[1] * seq, -1)
        if clip_txt is not None and clip_img is not None:
            if clip_img.ndim == 2:
                clip_img = clip_img[:, None]
            image = self.clip_img_mapper(clip_img).reshape(batch, clip_img.shape[1] * seq, -1)
            tokens = torch.cat([self.clip_txt_mapper(clip_txt), pooled, image], dim=1)
        else:
            tokens = pooled
        return self.clip_norm(tokens)

    # ------------------------------------------------------------------ blocks
    def _run(self, block: nn.Module, x: torch.Tensor, r_embed: torch.Tensor, clip: torch.Tensor,
             skip: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(block, SDCascadeResBlock):
            args = (x, skip)
        elif isinstance(block, SDCascadeAttnBlock):
            args = (x, clip)
        else:
            args = (x, r_embed)
        return run_checkpointed(block, self, *args)

    def _down_encode(self, x: torch.Tensor, r_embed: torch.Tensor, clip: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for blocks, downscaler, repeat_mappers in zip(self.down_blocks, self.down_downscalers, self.down_repeat_mappers):
            x = downscaler(x)
            for i in range(len(repeat_mappers) + 1):
                for block in blocks:
                    x = self._run(block, x, r_embed, clip)
                if i < len(repeat_mappers):
                    x = repeat_mappers[i](x)
            outputs.insert(0, x)
        return outputs

    def _up_decode(self, level_outputs: list[torch.Tensor], r_embed: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        x = level_outputs[0]
        for i, (blocks, upscaler, repeat_mappers) in enumerate(zip(self.up_blocks, self.up_upscalers,
                                                                    self.up_repeat_mappers)):
            for j in range(len(repeat_mappers) + 1):
                for k, block in enumerate(blocks):
                    skip = None
                    if isinstance(block, SDCascadeResBlock) and k == 0 and i > 0:
                        skip = level_outputs[i]
                        if x.shape[-2:] != skip.shape[-2:]:
                            x = F.interpolate(x.float(), skip.shape[-2:], mode="bilinear",
                                              align_corners=True).to(x.dtype)
                    x = self._run(block, x, r_embed, clip, skip)
                if j < len(repeat_mappers):
                    x = repeat_mappers[j](x)
            x = upscaler(x)
        return x

    def forward(
        self,
        sample: torch.Tensor,
        timestep_ratio: torch.Tensor,
        clip_text_pooled: torch.Tensor,
        clip_text: torch.Tensor | None = None,
        clip_img: torch.Tensor | None = None,
        effnet: torch.Tensor | None = None,
        pixels: torch.Tensor | None = None,
        sca: torch.Tensor | None = None,
        crp: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> StableCascadeUNetOutput | tuple[torch.Tensor]:
        if not torch.is_tensor(sample) or sample.ndim != 4:
            raise ValueError(f"sample must be a (B, C, H, W) tensor, got {getattr(sample, 'shape', type(sample))}")
        if not torch.is_tensor(timestep_ratio):
            timestep_ratio = torch.tensor(timestep_ratio, device=sample.device, dtype=sample.dtype)
        if timestep_ratio.ndim == 0:
            timestep_ratio = timestep_ratio.expand(sample.shape[0])
        if pixels is None:
            pixels = sample.new_zeros(sample.shape[0], 3, 8, 8)

        extra = {"sca": sca, "crp": crp}
        embeds = [self.get_timestep_ratio_embedding(timestep_ratio)]
        for name in self.config.timestep_conditioning_type:
            cond = extra.get(name)
            embeds.append(self.get_timestep_ratio_embedding(cond if cond is not None else torch.zeros_like(timestep_ratio)))
        r_embed = torch.cat(embeds, dim=1)
        clip = self.get_clip_embeddings(clip_text_pooled, clip_text, clip_img)

        x = self.embedding(sample)
        if hasattr(self, "effnet_mapper") and effnet is not None:
            x = x + self.effnet_mapper(F.interpolate(effnet, size=x.shape[-2:], mode="bilinear", align_corners=True))
        if hasattr(self, "pixels_mapper"):
            x = x + F.interpolate(self.pixels_mapper(pixels), size=x.shape[-2:], mode="bilinear", align_corners=True)
        x = self._up_decode(self._down_encode(x, r_embed, clip), r_embed, clip)
        out = self.clf(x)
        if not return_dict:
            return (out,)
        return StableCascadeUNetOutput(sample=out)
