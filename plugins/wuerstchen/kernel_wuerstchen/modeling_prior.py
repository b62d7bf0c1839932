"""Würstchen v2 stage C, the prior: text tokens -> 16-channel image embedding at 42x compression.

A single-resolution stack of ``depth`` (residual, timestep, self+cross attention) blocks over a 1x1 projected
input; the head predicts ``(a, b)`` and the model returns the noise estimate ``(x - a) / (|1 - b| + 1e-5)``.
"""

from __future__ import annotations

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel_layers.attention import AttentionMixin
from kernel_stable_cascade.unet_stable_cascade import (SDCascadeAttnBlock, SDCascadeLayerNorm, SDCascadeResBlock,
                                                       SDCascadeTimestepBlock)

from kernel_wuerstchen.common import ratio_embedding, run_block


class WuerstchenPrior(ModelMixin, AttentionMixin):
    """``forward(x (B, c_in, h, w), r (B,) ratios in [0, 1], c (B, L, c_cond) text tokens) -> (B, c_in, h, w)``."""

    component_kind = "denoiser"
    unet_name = "prior"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["SDCascadeResBlock", "SDCascadeAttnBlock"]

    @register_to_config
    def __init__(self, c_in: int = 16, c: int = 1280, c_cond: int = 1024, c_r: int = 64, depth: int = 16,
                 nhead: int = 16, dropout: float = 0.1):
        super().__init__()
        for name, value in (("c_in", c_in), ("c", c), ("c_cond", c_cond), ("c_r", c_r), ("depth", depth),
                            ("nhead", nhead)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if c % nhead:
            raise ValueError(f"c ({c}) must be divisible by nhead ({nhead})")
        self.c_r = c_r
        self.projection = nn.Conv2d(c_in, c, kernel_size=1)
        self.cond_mapper = nn.Sequential(nn.Linear(c_cond, c), nn.LeakyReLU(0.2), nn.Linear(c, c))
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(SDCascadeResBlock(c, dropout=dropout))
            self.blocks.append(SDCascadeTimestepBlock(c, c_r))
            self.blocks.append(SDCascadeAttnBlock(c, c, nhead, self_attn=True, dropout=dropout))
        self.out = nn.Sequential(SDCascadeLayerNorm(c, elementwise_affine=False, eps=1e-6),
                                 nn.Conv2d(c, c_in * 2, kernel_size=1))
        self.gradient_checkpointing = False

    @property
    def in_channels(self) -> int:
        return self.config.c_in

    def gen_r_embedding(self, r: torch.Tensor, max_positions: int = 10000) -> torch.Tensor:
        """Sinusoidal embedding ``(B, c_r)`` of the timestep ratios."""
        return ratio_embedding(r, self.c_r, max_positions)

    def forward(self, x: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != self.config.c_in:
            raise ValueError(f"x must be a (B, {self.config.c_in}, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        if not torch.is_tensor(c) or c.ndim != 3 or c.shape[-1] != self.config.c_cond:
            raise ValueError(f"c must be a (B, L, {self.config.c_cond}) tensor of text tokens, "
                             f"got {getattr(c, 'shape', type(c))}")
        if not torch.is_tensor(r):
            r = torch.tensor(r, device=x.device, dtype=x.dtype)
        if r.ndim == 0:
            r = r.expand(x.shape[0])
        h = self.projection(x)
        tokens = self.cond_mapper(c)
        r_embed = self.gen_r_embedding(r)
        for block in self.blocks:
            h = run_block(self, block, h, r_embed, tokens)
        a, b = self.out(h).chunk(2, dim=1)
        return (x - a) / ((1 - b).abs() + 1e-5)
