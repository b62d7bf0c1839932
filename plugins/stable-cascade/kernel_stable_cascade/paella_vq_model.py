"""Paella's VQ autoencoder, Stable Cascade's stage A, with Diffusers' config keys and state-dict layout.

Encoder: pixel-unshuffle by ``up_down_scale_factor`` and a 1x1 convolution, then ``levels`` levels of one
mixing residual block each (joined by stride-2 4x4 convolutions, channels doubling), then a bias-free 1x1
convolution to ``latent_channels`` and a batch norm.  Decoder: 1x1 convolution, ``bottleneck_blocks``
mixing blocks at the deepest level and one per further level (joined by stride-2 transposed convolutions),
then a 1x1 convolution and pixel shuffle.

A mixing residual block is two pre-norm residual branches (depthwise 3x3 with replication padding, then a
channel MLP), each norm's scale/shift and each branch's gain being six learned scalars (``gammas``).

Latent space: stage B works on ``latents / scale_factor``; :meth:`denormalize_latents` multiplies back
before :meth:`decode`.  The released decoder reads the unquantised latents (``force_not_quantize=True``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput


@dataclass
class VQEncoderOutput(BaseOutput):
    """``latents``: the encoder's (unquantised) latents ``(B, C, h, w)``."""

    latents: torch.Tensor = None


@dataclass
class DecoderOutput(BaseOutput):
    """``sample``: decoded images ``(B, C, H, W)``."""

    sample: torch.Tensor = None
    commit_loss: torch.Tensor | None = None


class PaellaVectorQuantizer(nn.Module):
    """Nearest-codebook quantisation, straight-through gradient, loss ``|z_q - sg(z)|^2 + beta |sg(z_q) - z|^2``."""

    def __init__(self, n_e: int, vq_embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_e, self.vq_embed_dim, self.beta = n_e, vq_embed_dim, beta
        self.embedding = nn.Embedding(n_e, vq_embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)

    def forward(self, z: torch.Tensor):
        flat = z.movedim(1, -1).reshape(-1, self.vq_embed_dim)
        indices = torch.cdist(flat, self.embedding.weight).argmin(dim=1)
        z_q = self.embedding(indices).view(z.shape[0], *z.shape[2:], self.vq_embed_dim).movedim(-1, 1)
        loss = torch.mean((z_q.detach() - z) ** 2) * self.beta + torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()
        return z_q, loss, (None, None, indices)


class MixingResidualBlock(nn.Module):
    """Depthwise and channel-MLP residual branches with six learned modulation scalars."""

    def __init__(self, inp_channels: int, embed_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(inp_channels, elementwise_affine=False, eps=1e-6)
        self.depthwise = nn.Sequential(nn.ReplicationPad2d(1),
                                       nn.Conv2d(inp_channels, inp_channels, kernel_size=3, groups=inp_channels))
        self.norm2 = nn.LayerNorm(inp_channels, elementwise_affine=False, eps=1e-6)
        self.channelwise = nn.Sequential(nn.Linear(inp_channels, embed_dim), nn.GELU(),
                                         nn.Linear(embed_dim, inp_channels))
        self.gammas = nn.Parameter(torch.zeros(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gammas
        h = self.norm1(x.movedim(1, -1)).movedim(-1, 1) * (1 + g[0]) + g[1]
        x = x + self.depthwise(h) * g[2]
        h = self.norm2(x.movedim(1, -1)) * (1 + g[3]) + g[4]
        return x + self.channelwise(h).movedim(-1, 1) * g[5]


class PaellaVQModel(ModelMixin):
    """Stable Cascade stage A: ``encode`` images in [0, 1] -> latents, ``decode`` latents -> images."""

    component_kind = "autoencoder"
    _skip_layerwise_casting_patterns = ["vquantizer"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        up_down_scale_factor: int = 2,
        levels: int = 2,
        bottleneck_blocks: int = 12,
        embed_dim: int = 384,
        latent_channels: int = 4,
        num_vq_embeddings: int = 8192,
        scale_factor: float = 0.3764,
    ):
        super().__init__()
        if not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels must be a positive int, got {levels!r}")
        widths = [embed_dim // 2**i for i in reversed(range(levels))]
        self.in_block = nn.Sequential(nn.PixelUnshuffle(up_down_scale_factor),
                                      nn.Conv2d(in_channels * up_down_scale_factor**2, widths[0], kernel_size=1))
        down = []
        for i, width in enumerate(widths):
            if i:
                down.append(nn.Conv2d(widths[i - 1], width, kernel_size=4, stride=2, padding=1))
            down.append(MixingResidualBlock(width, width * 4))
        down.append(nn.Sequential(nn.Conv2d(widths[-1], latent_channels, kernel_size=1, bias=False),
                                  nn.BatchNorm2d(latent_channels)))
        self.down_blocks = nn.Sequential(*down)
        self.vquantizer = PaellaVectorQuantizer(num_vq_embeddings, vq_embed_dim=latent_channels, beta=0.25)

        up = [nn.Sequential(nn.Conv2d(latent_channels, widths[-1], kernel_size=1))]
        rev = widths[::-1]
        for i, width in enumerate(rev):
            up.extend(MixingResidualBlock(width, width * 4) for _ in range(bottleneck_blocks if i == 0 else 1))
            if i < levels - 1:
                up.append(nn.ConvTranspose2d(width, rev[i + 1], kernel_size=4, stride=2, padding=1))
        self.up_blocks = nn.Sequential(*up)
        self.out_block = nn.Sequential(nn.Conv2d(widths[0], out_channels * up_down_scale_factor**2, kernel_size=1),
                                       nn.PixelShuffle(up_down_scale_factor))
        self.spatial_compression_ratio = up_down_scale_factor * 2 ** (levels - 1)

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Encoder latents -> stage B's space (divided by ``scale_factor``)."""
        return latents / self.config.scale_factor

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Stage B's latents -> what :meth:`decode` takes (times ``scale_factor``)."""
        return latents * self.config.scale_factor

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images ``(B, in_channels, H, W)`` -> latents ``(B, latent_channels, H/f, W/f)``."""
        if not torch.is_tensor(x) or x.ndim != 4:
            raise ValueError(f"x must be a (batch, channels, height, width) tensor, got {getattr(x, 'shape', type(x))}")
        h = self.down_blocks(self.in_block(x))
        return VQEncoderOutput(latents=h) if return_dict else (h,)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = True, return_dict: bool = True):
        """Latents -> images; quantised to the codebook first unless ``force_not_quantize``."""
        if not torch.is_tensor(h) or h.ndim != 4:
            raise ValueError(f"h must be a (batch, channels, height, width) tensor, got {getattr(h, 'shape', type(h))}")
        quant = h if force_not_quantize else self.vquantizer(h)[0]
        out = self.out_block(self.up_blocks(quant))
        return DecoderOutput(sample=out) if return_dict else (out,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        """Encode then decode (unquantised)."""
        out = self.decode(self.encode(sample).latents).sample
        return DecoderOutput(sample=out) if return_dict else (out,)
