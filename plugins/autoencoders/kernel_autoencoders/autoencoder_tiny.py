"""Tiny AutoEncoder for Stable Diffusion (TAESD, Ollin Boer Bohan, github.com/madebyollin/taesd).

A deterministic conv-only autoencoder distilled to share SD's latent space: ``encode(x).latents``
(images in [-1, 1]) and ``decode(z).sample``.  ``scale_latents`` maps raw latents to [0, 1]
(``z / (2 * latent_magnitude) + latent_shift``) for 8-bit storage; ``unscale_latents`` inverts it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel_layers.activations import get_activation

from kernel_autoencoders.autoencoder_kl import DecoderOutput
from kernel_autoencoders.latents import LatentSpaceMixin
from kernel_autoencoders.tiling import TilingMixin


@dataclass
class AutoencoderTinyOutput(BaseOutput):
    """``latents``: encoded latents ``(B, latent_channels, H/f, W/f)``."""

    latents: torch.Tensor = None


class AutoencoderTinyBlock(nn.Module):
    """Three 3x3 convs with activations, plus a (1x1) skip, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, act_fn: str):
        super().__init__()
        act = get_activation(act_fn)
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), act,
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1), act,
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        )
        self.skip = (nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
                     if in_channels != out_channels else nn.Identity())
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def _checkpointed(owner: nn.Module, layers: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and owner.gradient_checkpointing:
        return torch.utils.checkpoint.checkpoint(layers, x, use_reentrant=False)
    return layers(x)


class EncoderTiny(nn.Module):
    """Maps [-1, 1] images to latents; every stage after the first halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: tuple[int, ...],
                 block_out_channels: tuple[int, ...], act_fn: str):
        super().__init__()
        layers: list[nn.Module] = []
        for i, count in enumerate(num_blocks):
            channels = block_out_channels[i]
            if i == 0:
                layers.append(nn.Conv2d(in_channels, channels, kernel_size=3, padding=1))
            else:
                layers.append(nn.Conv2d(channels, channels, kernel_size=3, padding=1, stride=2, bias=False))
            layers += [AutoencoderTinyBlock(channels, channels, act_fn) for _ in range(count)]
        layers.append(nn.Conv2d(block_out_channels[-1], out_channels, kernel_size=3, padding=1))
        self.layers = nn.Sequential(*layers)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _checkpointed(self, self.layers, x.add(1).div(2))  # the network expects [0, 1] images


class DecoderTiny(nn.Module):
    """Soft-clamps latents to [-3, 3], decodes, and returns images in [-1, 1]."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: tuple[int, ...],
                 block_out_channels: tuple[int, ...], upsampling_scaling_factor: int, act_fn: str, upsample_fn: str):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1),
                                   get_activation(act_fn)]
        for i, count in enumerate(num_blocks):
            last = i == len(num_blocks) - 1
            channels = block_out_channels[i]
            layers += [AutoencoderTinyBlock(channels, channels, act_fn) for _ in range(count)]
            if not last:
                layers.append(nn.Upsample(scale_factor=upsampling_scaling_factor, mode=upsample_fn))
            layers.append(nn.Conv2d(channels, out_channels if last else channels, kernel_size=3, padding=1, bias=last))
        self.layers = nn.Sequential(*layers)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(x / 3) * 3
        return _checkpointed(self, self.layers, x).mul(2).sub(1)


class AutoencoderTiny(LatentSpaceMixin, TilingMixin, ModelMixin):
    """TAESD with Diffusers' config keys (see the module docstring)."""

    component_kind = "autoencoder"
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        encoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        decoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        act_fn: str = "relu",
        upsample_fn: str = "nearest",
        latent_channels: int = 4,
        upsampling_scaling_factor: int = 2,
        num_encoder_blocks: tuple[int, ...] = (1, 3, 3, 3),
        num_decoder_blocks: tuple[int, ...] = (3, 3, 3, 1),
        latent_magnitude: int = 3,
        latent_shift: float = 0.5,
        force_upcast: bool = False,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
    ):
        super().__init__()
        if len(encoder_block_out_channels) != len(num_encoder_blocks):
            raise ValueError("encoder_block_out_channels and num_encoder_blocks must have the same length")
        if len(decoder_block_out_channels) != len(num_decoder_blocks):
            raise ValueError("decoder_block_out_channels and num_decoder_blocks must have the same length")
        self.encoder = EncoderTiny(in_channels, latent_channels, num_encoder_blocks, encoder_block_out_channels, act_fn)
        self.decoder = DecoderTiny(latent_channels, out_channels, num_decoder_blocks, decoder_block_out_channels,
                                   upsampling_scaling_factor, act_fn, upsample_fn)
        self.latent_magnitude = latent_magnitude
        self.latent_shift = latent_shift
        self.scaling_factor = scaling_factor
        self.use_slicing = False
        self.use_tiling = False
        self.spatial_compression_ratio = 2 ** (len(num_encoder_blocks) - 1)
        self.tile_overlap_factor = 0.125
        self.tile_sample_min_size = 512
        self.tile_latent_min_size = self.tile_sample_min_size // self.spatial_compression_ratio
        # Diffusers writes these two keys into config.json as well; kept so saved folders match.
        self.register_to_config(block_out_channels=decoder_block_out_channels)
        self.register_to_config(force_upcast=False)

    def scale_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Raw latents -> [0, 1]."""
        return x.div(2 * self.latent_magnitude).add(self.latent_shift).clamp(0, 1)

    def unscale_latents(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> raw latents."""
        return x.sub(self.latent_shift).mul(2 * self.latent_magnitude)

    def _masked_tiles(self, x: torch.Tensor, fn, tile: int, out_channels: int, ratio: float) -> torch.Tensor:
        """Tiles every ``tile - blend`` pixels; each output tile is mixed in with a linear ramp mask."""
        blend = int(tile * self.tile_overlap_factor)
        step = tile - blend
        out_tile, out_blend = int(tile * ratio), int(blend * ratio)
        ramp = (torch.arange(out_tile) / (out_blend - 1)).clamp(0, 1).to(x.device)
        out = torch.zeros(x.shape[0], out_channels, int(x.shape[-2] * ratio), int(x.shape[-1] * ratio),
                          device=x.device, dtype=x.dtype)
        for i in range(0, x.shape[-2], step):
            for j in range(0, x.shape[-1], step):
                result = fn(x[..., i:i + tile, j:j + tile])
                h, w = result.shape[-2:]
                oi, oj = int(i * ratio), int(j * ratio)
                mask_i = torch.ones_like(ramp) if i == 0 else ramp
                mask_j = torch.ones_like(ramp) if j == 0 else ramp
                mask = (mask_i[:, None] * mask_j[None, :])[:h, :w]
                target = out[..., oi:oi + h, oj:oj + w]
                target.copy_(mask * result + (1 - mask) * target)
        return out

    def _encode_one(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling:
            return self._masked_tiles(x, self.encoder, self.tile_sample_min_size, self.config.latent_channels,
                                      1 / self.spatial_compression_ratio)
        return self.encoder(x)

    def _decode_one(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling:
            return self._masked_tiles(z, self.decoder, self.tile_latent_min_size, self.config.out_channels,
                                      self.spatial_compression_ratio)
        return self.decoder(z)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        if x.ndim != 4:
            raise ValueError(f"x must be (batch, channels, height, width), got shape {tuple(x.shape)}")
        if self.use_slicing and x.shape[0] > 1:
            latents = torch.cat([self._encode_one(piece) for piece in x.split(1)])
        else:
            latents = self._encode_one(x)
        return AutoencoderTinyOutput(latents=latents) if return_dict else (latents,)

    def decode(self, x: torch.Tensor, generator: torch.Generator | None = None, return_dict: bool = True):
        if x.ndim != 4:
            raise ValueError(f"latents must be (batch, channels, height, width), got shape {tuple(x.shape)}")
        if self.use_slicing and x.shape[0] > 1:
            images = torch.cat([self._decode_one(piece) for piece in x.split(1)])
        else:
            images = self._decode_one(x)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        """Encode, quantize the latents to 8 bits (as TAESD stores them), decode."""
        latents = self.encode(sample).latents
        quantized = self.scale_latents(latents).mul(255).round().byte()
        images = self.decode(self.unscale_latents(quantized / 255.0)).sample
        return DecoderOutput(sample=images) if return_dict else (images,)
