"""Würstchen v2 stage B, the decoder ("DiffNeXt"): stage C's image embedding + text -> 4-channel Paella latents.

A UNet of ConvNeXt-style levels (Stable Cascade's residual / timestep / attention blocks) over 2x2-patched
latents.  Levels with ``inject_effnet`` feed every residual block the stage C embedding, resized bicubically
(antialiased) to the level's grid and mapped to ``c_cond`` channels by a 1x1 convolution (one mapper per level
going down and one per level coming up).  The head predicts ``(a, b)``; ``b`` is squashed into
``[eps, 1 - eps]`` and the model returns the noise estimate ``(x - a) / b``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel_layers.attention import AttentionMixin
from kernel_stable_cascade.unet_stable_cascade import (SDCascadeAttnBlock, SDCascadeLayerNorm, SDCascadeResBlock,
                                                       SDCascadeTimestepBlock)

from kernel_wuerstchen.common import ratio_embedding, run_block

_BLOCK_LETTERS = "CTA"  # residual (ConvNeXt), timestep, attention


def _norm(channels: int) -> SDCascadeLayerNorm:
    return SDCascadeLayerNorm(channels, elementwise_affine=False, eps=1e-6)


class WuerstchenDiffNeXt(ModelMixin, AttentionMixin):
    """``forward(x (B, c_in, H, W), r (B,), effnet (B, effnet_embd, h, w), clip (B, L, clip_embd))``.

    Returns the noise estimate ``(B, c_out, H, W)`` (``return_noise=False``: the head's ``(a, b)``).
    """

    component_kind = "denoiser"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["SDCascadeResBlock", "SDCascadeAttnBlock"]

    @register_to_config
    def __init__(
        self,
        c_in: int = 4,
        c_out: int = 4,
        c_r: int = 64,
        patch_size: int = 2,
        c_cond: int = 1024,
        c_hidden: tuple[int, ...] = (320, 640, 1280, 1280),
        nhead: tuple[int, ...] = (-1, 10, 20, 20),
        blocks: tuple[int, ...] = (4, 4, 14, 4),
        level_config: tuple[str, ...] = ("CT", "CTA", "CTA", "CTA"),
        inject_effnet: tuple[bool, ...] = (False, True, True, True),
        effnet_embd: int = 16,
        clip_embd: int = 1024,
        kernel_size: int = 3,
        dropout: float | tuple[float, ...] = 0.1,
    ):
        super().__init__()
        n = len(c_hidden)
        dropout = list(dropout) if isinstance(dropout, (list, tuple)) else [dropout] * n
        for name, value in (("nhead", nhead), ("blocks", blocks), ("level_config", level_config),
                            ("inject_effnet", inject_effnet), ("dropout", dropout)):
            if len(value) != n:
                raise ValueError(f"{name} must have one entry per level of c_hidden ({n}), got {list(value)!r}")
        for level, letters in enumerate(level_config):
            if not letters or any(ch not in _BLOCK_LETTERS for ch in letters):
                raise ValueError(f"level_config[{level}]={letters!r}: use the block letters C (residual), "
                                 "T (timestep) and A (attention)")
        self.c_r, self.c_cond = c_r, c_cond

        self.clip_mapper = nn.Linear(clip_embd, c_cond)
        # One optional mapper per level down, then per level up (deepest first); ``None`` keeps the indices.
        self.effnet_mappers = nn.ModuleList(
            nn.Conv2d(effnet_embd, c_cond, kernel_size=1) if inject else None
            for inject in list(inject_effnet) + list(reversed(inject_effnet)))
        self.seq_norm = nn.LayerNorm(c_cond, elementwise_affine=False, eps=1e-6)
        self.embedding = nn.Sequential(nn.PixelUnshuffle(patch_size),
                                       nn.Conv2d(c_in * patch_size**2, c_hidden[0], kernel_size=1), _norm(c_hidden[0]))

        def make(letter: str, level: int, c_skip: int) -> nn.Module:
            width = c_hidden[level]
            if letter == "C":
                return SDCascadeResBlock(width, c_skip, kernel_size=kernel_size, dropout=dropout[level])
            if letter == "T":
                return SDCascadeTimestepBlock(width, c_r)
            return SDCascadeAttnBlock(width, c_cond, nhead[level], self_attn=True, dropout=dropout[level])

        # Each level's module list holds its resampler (first going down, last coming up) and its blocks.
        self.down_blocks = nn.ModuleList()
        for level in range(n):
            modules = nn.ModuleList()
            if level > 0:
                modules.append(nn.Sequential(_norm(c_hidden[level - 1]),
                                             nn.Conv2d(c_hidden[level - 1], c_hidden[level], kernel_size=2, stride=2)))
            effnet_skip = c_cond if inject_effnet[level] else 0
            for _ in range(blocks[level]):
                for letter in level_config[level]:
                    modules.append(make(letter, level, effnet_skip))
            self.down_blocks.append(modules)

        self.up_blocks = nn.ModuleList()
        for level in reversed(range(n)):
            modules = nn.ModuleList()
            for j in range(blocks[level]):
                for k, letter in enumerate(level_config[level]):
                    c_skip = c_hidden[level] if level < n - 1 and j == 0 and k == 0 else 0
                    c_skip += c_cond if inject_effnet[level] else 0
                    modules.append(make(letter, level, c_skip))
            if level > 0:
                modules.append(nn.Sequential(_norm(c_hidden[level]),
                                             nn.ConvTranspose2d(c_hidden[level], c_hidden[level - 1], kernel_size=2,
                                                                stride=2)))
            self.up_blocks.append(modules)

        self.clf = nn.Sequential(_norm(c_hidden[0]), nn.Conv2d(c_hidden[0], 2 * c_out * patch_size**2, kernel_size=1),
                                 nn.PixelShuffle(patch_size))
        self.gradient_checkpointing = False
        self._init_weights()

    @property
    def in_channels(self) -> int:
        return self.config.c_in

    def _init_weights(self) -> None:
        """The training initialisation of the original code: Xavier weights and zero biases, small conditioning
        mappers, a zero output head, zero timestep modulation and residual branches scaled by the depth."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for mapper in self.effnet_mappers:
            if mapper is not None:
                nn.init.normal_(mapper.weight, std=0.02)
        nn.init.normal_(self.clip_mapper.weight, std=0.02)
        nn.init.xavier_uniform_(self.embedding[1].weight, 0.02)
        nn.init.zeros_(self.clf[1].weight)
        depth_scale = math.sqrt(1 / sum(self.config.blocks))
        for level in [*self.down_blocks, *self.up_blocks]:
            for block in level:
                if isinstance(block, SDCascadeResBlock):
                    block.channelwise[-1].weight.data.mul_(depth_scale)
                elif isinstance(block, SDCascadeTimestepBlock):
                    nn.init.zeros_(block.mapper.weight)

    # ------------------------------------------------------------------ conditioning
    def gen_r_embedding(self, r: torch.Tensor, max_positions: int = 10000) -> torch.Tensor:
        """Sinusoidal embedding ``(B, c_r)`` of the timestep ratios."""
        return ratio_embedding(r, self.c_r, max_positions)

    def gen_c_embeddings(self, clip: torch.Tensor) -> torch.Tensor:
        """Text tokens mapped to ``c_cond`` and layer-normalised."""
        return self.seq_norm(self.clip_mapper(clip))

    def _effnet_at(self, index: int, effnet: torch.Tensor, size) -> torch.Tensor | None:
        mapper = self.effnet_mappers[index]
        if mapper is None:
            return None
        resized = F.interpolate(effnet.float(), size=size, mode="bicubic", antialias=True, align_corners=True)
        return mapper(resized.to(effnet.dtype))

    # ------------------------------------------------------------------ levels
    def _down_encode(self, x, r_embed, effnet, clip=None) -> list[torch.Tensor]:
        outputs = []
        for level, modules in enumerate(self.down_blocks):
            effnet_c, mapped = None, False
            for block in modules:
                if isinstance(block, SDCascadeResBlock) and not mapped:
                    effnet_c, mapped = self._effnet_at(level, effnet, x.shape[-2:]), True
                x = run_block(self, block, x, r_embed, clip, effnet_c)
            outputs.insert(0, x)
        return outputs

    def _up_decode(self, level_outputs, r_embed, effnet, clip=None) -> torch.Tensor:
        x = level_outputs[0]
        for i, modules in enumerate(self.up_blocks):
            effnet_c, mapped = None, False
            for j, block in enumerate(modules):
                skip = None
                if isinstance(block, SDCascadeResBlock):
                    if not mapped:
                        effnet_c, mapped = self._effnet_at(len(self.down_blocks) + i, effnet, x.shape[-2:]), True
                    skip = level_outputs[i] if j == 0 and i > 0 else None
                    if effnet_c is not None:
                        skip = effnet_c if skip is None else torch.cat([skip, effnet_c], dim=1)
                x = run_block(self, block, x, r_embed, clip, skip)
        return x

    def forward(self, x: torch.Tensor, r: torch.Tensor, effnet: torch.Tensor, clip: torch.Tensor | None = None,
                x_cat: torch.Tensor | None = None, eps: float = 1e-3, return_noise: bool = True):
        if x_cat is not None:
            x = torch.cat([x, x_cat], dim=1)
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != self.config.c_in:
            raise ValueError(f"x (with x_cat) must be a (B, {self.config.c_in}, H, W) tensor, "
                             f"got {getattr(x, 'shape', type(x))}")
        # A decoder that injects the embedding at no level never reads its channels (Diffusers' test decoder).
        injected = any(self.config.inject_effnet)
        if not torch.is_tensor(effnet) or effnet.ndim != 4 or (injected and effnet.shape[1] != self.config.effnet_embd):
            raise ValueError(f"effnet must be a (B, {self.config.effnet_embd}, h, w) image embedding, "
                             f"got {getattr(effnet, 'shape', type(effnet))}")
        if not torch.is_tensor(r):
            r = torch.tensor(r, device=x.device, dtype=x.dtype)
        if r.ndim == 0:
            r = r.expand(x.shape[0])
        r_embed = self.gen_r_embedding(r)
        if clip is not None:
            clip = self.gen_c_embeddings(clip)
        h = self.embedding(x)
        h = self._up_decode(self._down_encode(h, r_embed, effnet, clip), r_embed, effnet, clip)
        a, b = self.clf(h).chunk(2, dim=1)
        b = b.sigmoid() * (1 - eps * 2) + eps
        if return_noise:
            return (x - a) / b
        return a, b
