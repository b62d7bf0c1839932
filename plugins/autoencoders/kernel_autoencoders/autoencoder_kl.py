"""The KL-regularized image autoencoder of latent diffusion (Rombach et al., arXiv:2112.10752, Sec. 3 and App. G).

``encode(x).latent_dist`` is a diagonal Gaussian over latents ``(B, latent_channels, H/f, W/f)``
(``f = 2 ** (len(block_out_channels) - 1)``); ``decode(z).sample`` maps latents back to images.
Pipelines multiply latents by ``scaling_factor`` (after subtracting ``shift_factor`` if set) before
diffusion and undo it before decoding.

Memory switches: ``enable_slicing`` (one image of the batch at a time; exact) and ``enable_tiling``
(overlapping tiles blended linearly across ``tile_overlap_factor`` of a tile, matching Diffusers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel.scheduling import randn_tensor
from kernel_layers.attention import AttentionMixin
from kernel_layers.blocks_2d import DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D, run_checkpointed
from kernel_layers.normalization import SpatialNorm

from kernel_autoencoders.latents import LatentSpaceMixin
from kernel_autoencoders.tiling import TilingMixin


class DiagonalGaussianDistribution:
    """Gaussian with per-element mean and log-variance taken from the two channel halves of ``parameters``."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            self.std = self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """``mean + std * eps`` with ``eps`` drawn from ``generator`` (same seed, same sample as Diffusers)."""
        eps = randn_tensor(self.mean.shape, generator=generator, device=self.parameters.device,
                           dtype=self.parameters.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        """KL divergence to ``other`` (default: the standard normal), summed over C, H, W."""
        if self.deterministic:
            return torch.zeros(1, device=self.mean.device)
        if other is None:
            terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        else:
            terms = (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar
        return 0.5 * terms.sum(dim=[1, 2, 3])

    def nll(self, sample: torch.Tensor, dims: tuple[int, ...] = (1, 2, 3)) -> torch.Tensor:
        if self.deterministic:
            return torch.zeros(1, device=self.mean.device)
        log_two_pi = torch.log(torch.tensor(2.0 * torch.pi, dtype=self.mean.dtype, device=self.mean.device))
        return 0.5 * (log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var).sum(dim=list(dims))


@dataclass
class AutoencoderKLOutput(BaseOutput):
    """``latent_dist``: the posterior :class:`DiagonalGaussianDistribution`."""

    latent_dist: DiagonalGaussianDistribution = None


@dataclass
class DecoderOutput(BaseOutput):
    """``sample``: decoded images ``(B, C, H, W)``; ``commit_loss`` for VQ models."""

    sample: torch.Tensor = None
    commit_loss: torch.Tensor | None = None


def _check_types(types, allowed: str, what: str) -> None:
    for t in types:
        if t != allowed:
            raise ValueError(f"{what} {t!r} is not supported by this autoencoder; use {allowed!r}")


class Encoder(nn.Module):
    """conv_in -> encoder stages (downsampling) -> mid-block -> norm, SiLU, conv_out (``2 * out_channels`` if ``double_z``)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, down_block_types=("DownEncoderBlock2D",),
                 block_out_channels=(64,), layers_per_block: int = 2, norm_num_groups: int = 32, act_fn: str = "silu",
                 double_z: bool = True, mid_block_add_attention: bool = True):
        super().__init__()
        _check_types(down_block_types, "DownEncoderBlock2D", "down block type")
        self.layers_per_block = layers_per_block
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList([
            DownEncoderBlock2D(in_channels=block_out_channels[max(i - 1, 0)], out_channels=channels,
                               num_layers=layers_per_block, resnet_eps=1e-6, resnet_act_fn=act_fn,
                               resnet_groups=norm_num_groups, add_downsample=i < len(block_out_channels) - 1,
                               downsample_padding=0)
            for i, channels in enumerate(block_out_channels)
        ])
        self.mid_block = UNetMidBlock2D(in_channels=block_out_channels[-1], temb_channels=None, resnet_eps=1e-6,
                                        resnet_act_fn=act_fn, output_scale_factor=1, resnet_time_scale_shift="default",
                                        attention_head_dim=block_out_channels[-1], resnet_groups=norm_num_groups,
                                        add_attention=mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[-1], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[-1], 2 * out_channels if double_z else out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        for block in self.down_blocks:
            sample = run_checkpointed(block, self, sample)
        sample = run_checkpointed(self.mid_block, self, sample)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


class Decoder(nn.Module):
    """conv_in -> mid-block -> decoder stages (upsampling) -> norm, SiLU, conv_out.

    ``norm_type="spatial"`` conditions every norm on the latent (MoVQ); ``"group"`` is plain.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, up_block_types=("UpDecoderBlock2D",),
                 block_out_channels=(64,), layers_per_block: int = 2, norm_num_groups: int = 32, act_fn: str = "silu",
                 norm_type: str = "group", mid_block_add_attention: bool = True):
        super().__init__()
        _check_types(up_block_types, "UpDecoderBlock2D", "up block type")
        if norm_type not in ("group", "spatial"):
            raise ValueError(f"norm_type={norm_type!r}; use 'group' or 'spatial'")
        self.layers_per_block = layers_per_block
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        temb_channels = in_channels if norm_type == "spatial" else None
        self.mid_block = UNetMidBlock2D(in_channels=block_out_channels[-1], temb_channels=temb_channels,
                                        resnet_eps=1e-6, resnet_act_fn=act_fn, output_scale_factor=1,
                                        resnet_time_scale_shift="default" if norm_type == "group" else norm_type,
                                        attention_head_dim=block_out_channels[-1], resnet_groups=norm_num_groups,
                                        add_attention=mid_block_add_attention)
        rev = list(reversed(block_out_channels))
        self.up_blocks = nn.ModuleList([
            UpDecoderBlock2D(in_channels=rev[max(i - 1, 0)], out_channels=channels, num_layers=layers_per_block + 1,
                             resolution_idx=i, add_upsample=i < len(rev) - 1, resnet_eps=1e-6, resnet_act_fn=act_fn,
                             resnet_groups=norm_num_groups, temb_channels=temb_channels,
                             resnet_time_scale_shift=norm_type)
            for i, channels in enumerate(rev)
        ])
        self.conv_norm_out = (SpatialNorm(block_out_channels[0], temb_channels) if norm_type == "spatial" else
                              nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=1e-6))
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor, latent_embeds: torch.Tensor | None = None) -> torch.Tensor:
        sample = self.conv_in(sample)
        sample = run_checkpointed(self.mid_block, self, sample, latent_embeds)
        for block in self.up_blocks:
            sample = run_checkpointed(block, self, sample, latent_embeds)
        sample = self.conv_norm_out(sample) if latent_embeds is None else self.conv_norm_out(sample, latent_embeds)
        return self.conv_out(self.conv_act(sample))


class AutoencoderKL(LatentSpaceMixin, TilingMixin, ModelMixin, AttentionMixin):
    """KL autoencoder with Diffusers' config keys (see the module docstring)."""

    component_kind = "autoencoder"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float] | None = None,
        latents_std: tuple[float] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        if len(down_block_types) != len(block_out_channels) or len(up_block_types) != len(block_out_channels):
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        self.encoder = Encoder(in_channels=in_channels, out_channels=latent_channels, down_block_types=down_block_types,
                               block_out_channels=block_out_channels, layers_per_block=layers_per_block, act_fn=act_fn,
                               norm_num_groups=norm_num_groups, double_z=True,
                               mid_block_add_attention=mid_block_add_attention)
        self.decoder = Decoder(in_channels=latent_channels, out_channels=out_channels, up_block_types=up_block_types,
                               block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                               norm_num_groups=norm_num_groups, act_fn=act_fn,
                               mid_block_add_attention=mid_block_add_attention)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        self.spatial_compression_ratio = 2 ** (len(block_out_channels) - 1)
        self.use_slicing = False
        self.use_tiling = False
        self.tile_sample_min_size = sample_size
        size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
        self.tile_latent_min_size = int(size / (2 ** (len(block_out_channels) - 1)))
        self.tile_overlap_factor = 0.25

    # ------------------------------------------------------------------ one batch, no slicing
    def _encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        return self.quant_conv(h) if self.quant_conv is not None else h

    def _decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and (x.shape[-1] > self.tile_sample_min_size or x.shape[-2] > self.tile_sample_min_size):
            return self._tiled_encode(x)
        return self._encode_moments(x)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and (z.shape[-1] > self.tile_latent_min_size or z.shape[-2] > self.tile_latent_min_size):
            return self._tiled_decode(z)
        return self._decode_latents(z)

    def _tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.blend_tiles(x, self._encode_moments, self.tile_sample_min_size, self.tile_latent_min_size)

    def _tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.blend_tiles(z, self._decode_latents, self.tile_latent_min_size, self.tile_sample_min_size)

    # ------------------------------------------------------------------ public API
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images ``(B, in_channels, H, W)`` in [-1, 1] -> posterior over latents."""
        if x.ndim != 4:
            raise ValueError(f"x must be (batch, channels, height, width), got shape {tuple(x.shape)}")
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(piece) for piece in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None):
        """Latents ``(B, latent_channels, h, w)`` -> images ``(B, out_channels, h*f, w*f)``."""
        if z.ndim != 4:
            raise ValueError(f"z must be (batch, channels, height, width), got shape {tuple(z.shape)}")
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self._decode(piece) for piece in z.split(1)])
        else:
            decoded = self._decode(z)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def tiled_encode(self, x: torch.Tensor, return_dict: bool = True):
        posterior = DiagonalGaussianDistribution(self._tiled_encode(x))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def tiled_decode(self, z: torch.Tensor, return_dict: bool = True):
        decoded = self._tiled_decode(z)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None):
        """Encode then decode (the posterior mean, or a sample with ``sample_posterior``)."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self.decode(z).sample
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)
