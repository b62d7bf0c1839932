"""``AutoencoderOobleck``: the waveform VAE of Stable Audio (Evans et al. 2024, arXiv:2407.14358, Sec. 3.1),
with Diffusers' config keys and state-dict layout.

Convolutions are weight-normalised (``weight_g`` / ``weight_v`` as ``torch.nn.utils.weight_norm`` stores
them) and every activation is Snake (Ziyin et al. 2020, arXiv:2006.08195): ``x + sin(a x)^2 / b`` with
per-channel, log-scale ``a`` and ``b``.  ``encode`` of ``(B, audio_channels, T)`` gives a Gaussian over
``(B, decoder_input_channels, T / hop_length)`` latents (mean and softplus scale from the two channel
halves); ``decode`` maps latents back to waveforms.  Latents are used as they are (no scaling factor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel.scheduling import randn_tensor


def _weight_normed(module: nn.Module) -> nn.Module:
    """Replace ``module.weight`` by a magnitude ``weight_g`` (per output slice, dim 0) and a direction ``weight_v``."""
    weight = module.weight.detach()
    del module.weight
    module.weight_g = nn.Parameter(torch.norm_except_dim(weight, 2, 0))
    module.weight_v = nn.Parameter(weight.clone())
    return module


class WNConv1d(nn.Conv1d):
    """A weight-normalised ``Conv1d`` (state dict: ``weight_g``, ``weight_v``, ``bias``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _weight_normed(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, torch._weight_norm(self.weight_v, self.weight_g, 0), self.bias)


class WNConvTranspose1d(nn.ConvTranspose1d):
    """A weight-normalised ``ConvTranspose1d`` (no output padding, as Oobleck uses it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _weight_normed(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch._weight_norm(self.weight_v, self.weight_g, 0)
        return F.conv_transpose1d(x, weight, self.bias, self.stride, self.padding, self.output_padding, self.groups,
                                  self.dilation)


class Snake1d(nn.Module):
    """Snake activation ``x + sin(alpha x)^2 / (beta + 1e-9)`` on ``(B, C, T)``; ``alpha``, ``beta`` per channel
    (stored as logarithms when ``logscale``)."""

    def __init__(self, hidden_dim: int, logscale: bool = True):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1, hidden_dim, 1))
        self.beta = nn.Parameter(torch.zeros(1, hidden_dim, 1))
        self.logscale = logscale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = (self.alpha.exp(), self.beta.exp()) if self.logscale else (self.alpha, self.beta)
        return x + (beta + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


class OobleckResidualUnit(nn.Module):
    """Snake, dilated width-7 conv, Snake, 1x1 conv, plus the input."""

    def __init__(self, dimension: int = 16, dilation: int = 1):
        super().__init__()
        self.snake1 = Snake1d(dimension)
        self.conv1 = WNConv1d(dimension, dimension, kernel_size=7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake1d(dimension)
        self.conv2 = WNConv1d(dimension, dimension, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.snake2(self.conv1(self.snake1(x))))
        trim = (x.shape[-1] - out.shape[-1]) // 2
        if trim > 0:
            x = x[..., trim:-trim]
        return x + out


def _residual_units(dimension: int) -> list[OobleckResidualUnit]:
    return [OobleckResidualUnit(dimension, dilation=d) for d in (1, 3, 9)]


class OobleckEncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9), Snake, then a strided conv down by ``stride``."""

    def __init__(self, input_dim: int, output_dim: int, stride: int = 1):
        super().__init__()
        self.res_unit1, self.res_unit2, self.res_unit3 = _residual_units(input_dim)
        self.snake1 = Snake1d(input_dim)
        self.conv1 = WNConv1d(input_dim, output_dim, kernel_size=2 * stride, stride=stride,
                              padding=math.ceil(stride / 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_unit3(self.res_unit2(self.res_unit1(x)))
        return self.conv1(self.snake1(x))


class OobleckDecoderBlock(nn.Module):
    """Snake, a transposed conv up by ``stride``, then three residual units."""

    def __init__(self, input_dim: int, output_dim: int, stride: int = 1):
        super().__init__()
        self.snake1 = Snake1d(input_dim)
        self.conv_t1 = WNConvTranspose1d(input_dim, output_dim, kernel_size=2 * stride, stride=stride,
                                         padding=math.ceil(stride / 2))
        self.res_unit1, self.res_unit2, self.res_unit3 = _residual_units(output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_t1(self.snake1(x))
        return self.res_unit3(self.res_unit2(self.res_unit1(x)))


class OobleckEncoder(nn.Module):
    """Waveform ``(B, audio_channels, T)`` -> moments ``(B, encoder_hidden_size, T / prod(ratios))``."""

    def __init__(self, encoder_hidden_size: int, audio_channels: int, downsampling_ratios, channel_multiples):
        super().__init__()
        mult = [1, *channel_multiples]
        self.conv1 = WNConv1d(audio_channels, encoder_hidden_size, kernel_size=7, padding=3)
        self.block = nn.ModuleList(
            OobleckEncoderBlock(encoder_hidden_size * mult[i], encoder_hidden_size * mult[i + 1], stride)
            for i, stride in enumerate(downsampling_ratios))
        width = encoder_hidden_size * mult[-1]
        self.snake1 = Snake1d(width)
        self.conv2 = WNConv1d(width, encoder_hidden_size, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))


class OobleckDecoder(nn.Module):
    """Latents ``(B, input_channels, t)`` -> waveform ``(B, audio_channels, t * prod(ratios))``."""

    def __init__(self, channels: int, input_channels: int, audio_channels: int, upsampling_ratios, channel_multiples):
        super().__init__()
        mult = [1, *channel_multiples]
        n = len(upsampling_ratios)
        self.conv1 = WNConv1d(input_channels, channels * mult[-1], kernel_size=7, padding=3)
        self.block = nn.ModuleList(
            OobleckDecoderBlock(channels * mult[n - i], channels * mult[n - i - 1], stride)
            for i, stride in enumerate(upsampling_ratios))
        self.snake1 = Snake1d(channels)
        self.conv2 = WNConv1d(channels, audio_channels, kernel_size=7, padding=3, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.conv1(z)
        for block in self.block:
            z = block(z)
        return self.conv2(self.snake1(z))


class OobleckDiagonalGaussianDistribution:
    """Gaussian whose mean and (softplus) scale are the two channel halves of ``parameters``."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, self.scale = parameters.chunk(2, dim=1)
        self.std = F.softplus(self.scale) + 1e-4
        self.var = self.std * self.std
        self.logvar = torch.log(self.var)
        self.deterministic = deterministic

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        eps = randn_tensor(self.mean.shape, generator=generator, device=self.parameters.device,
                           dtype=self.parameters.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: "OobleckDiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        """KL divergence to ``other`` (default: the standard normal), summed over channels, averaged over the rest."""
        if self.deterministic:
            return torch.zeros(1, device=self.mean.device)
        if other is None:
            return (self.mean * self.mean + self.var - self.logvar - 1.0).sum(1).mean()
        terms = (self.mean - other.mean).pow(2) / other.var + self.var / other.var + self.logvar - other.logvar - 1
        return terms.sum(1).mean()


@dataclass
class AutoencoderOobleckOutput(BaseOutput):
    """``latent_dist``: the posterior over latents."""

    latent_dist: OobleckDiagonalGaussianDistribution = None


@dataclass
class OobleckDecoderOutput(BaseOutput):
    """``sample``: ``(B, audio_channels, T)`` waveforms."""

    sample: torch.Tensor = None


def _tiled(fn, x: torch.Tensor, chunk: int, overlap: int) -> torch.Tensor:
    """``fn`` on windows of ``chunk`` + ``overlap`` each side along time, each trimmed back to its core and joined."""
    stride = chunk - 2 * overlap
    if stride <= 0:
        raise ValueError(f"a tile of {chunk} with {overlap} overlap on each side leaves no stride; make the tile "
                         "longer than twice the overlap")
    length, pieces, ratio = x.shape[-1], [], None
    for start in range(0, length, stride):
        end = min(start + stride, length)
        lo, hi = max(0, start - overlap), min(length, end + overlap)
        tile = fn(x[:, :, lo:hi])
        if ratio is None:
            ratio = tile.shape[-1] / (hi - lo)
        left, right = int(round((start - lo) * ratio)), int(round((hi - end) * ratio))
        pieces.append(tile[:, :, left:tile.shape[-1] - right if right > 0 else tile.shape[-1]])
    return torch.cat(pieces, dim=-1)


class AutoencoderOobleck(ModelMixin):
    """Oobleck waveform VAE (see the module docstring).  ``hop_length = prod(downsampling_ratios)`` samples per
    latent frame; ``sampling_rate`` is the rate of the waveforms it was trained on."""

    component_kind = "autoencoder"
    _supports_gradient_checkpointing = False
    _known_contract_failures = {
        "encode_decode_shapes": "the contract reads config['latent_channels']; Oobleck's latent width is "
                                "decoder_input_channels (Diffusers' key). tests/test_models.py checks the shapes."}

    @register_to_config
    def __init__(
        self,
        encoder_hidden_size: int = 128,
        downsampling_ratios: list[int] = [2, 4, 4, 8, 8],  # noqa: B006 - Diffusers' defaults
        channel_multiples: list[int] = [1, 2, 4, 8, 16],  # noqa: B006
        decoder_channels: int = 128,
        decoder_input_channels: int = 64,
        audio_channels: int = 2,
        sampling_rate: int = 44100,
    ):
        super().__init__()
        if len(downsampling_ratios) != len(channel_multiples):
            raise ValueError(f"downsampling_ratios ({len(downsampling_ratios)}) and channel_multiples "
                             f"({len(channel_multiples)}) must have the same length (one per encoder block)")
        if encoder_hidden_size != 2 * decoder_input_channels:
            raise ValueError(f"encoder_hidden_size={encoder_hidden_size} must be twice decoder_input_channels="
                             f"{decoder_input_channels}: the encoder gives the mean and the scale of each latent "
                             "channel")
        self.encoder_hidden_size = encoder_hidden_size
        self.downsampling_ratios = list(downsampling_ratios)
        self.upsampling_ratios = self.downsampling_ratios[::-1]
        self.decoder_channels = decoder_channels
        self.hop_length = int(np.prod(downsampling_ratios))
        self.spatial_compression_ratio = self.hop_length
        self.sampling_rate = sampling_rate
        self.encoder = OobleckEncoder(encoder_hidden_size, audio_channels, self.downsampling_ratios,
                                      list(channel_multiples))
        self.decoder = OobleckDecoder(decoder_channels, decoder_input_channels, audio_channels,
                                      self.upsampling_ratios, list(channel_multiples))
        self.use_slicing = False
        self.use_tiling = False
        self.tile_sample_min_length = sampling_rate * 30  # 30 s windows with 2 s of context each side
        self.tile_sample_overlap = sampling_rate * 2
        self.tile_latent_min_length = 512
        self.tile_latent_overlap = 64

    # ------------------------------------------------------------------ memory switches
    def enable_slicing(self) -> None:
        """Encode/decode one waveform of the batch at a time (identical result)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, use_tiling: bool = True) -> None:
        """Process long inputs in overlapping windows along time (bounded memory; each window has its own
        receptive-field edge, so the result is close to, not equal to, the untiled one - as in Diffusers)."""
        self.use_tiling = use_tiling

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # ------------------------------------------------------------------ latent space (identity for Oobleck)
    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    # ------------------------------------------------------------------ encode / decode
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and x.shape[-1] > self.tile_sample_min_length:
            return _tiled(self.encoder, x, self.tile_sample_min_length, self.tile_sample_overlap)
        return self.encoder(x)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and z.shape[-1] > self.tile_latent_min_length:
            return _tiled(self.decoder, z, self.tile_latent_min_length, self.tile_latent_overlap)
        return self.decoder(z)

    def _batched(self, fn, x: torch.Tensor) -> torch.Tensor:
        if self.use_slicing and x.shape[0] > 1:
            return torch.cat([fn(piece) for piece in x.split(1)])
        return fn(x)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Waveforms ``(B, audio_channels, T)`` -> posterior over ``(B, decoder_input_channels, T / hop_length)``."""
        if x.ndim != 3:
            raise ValueError(f"x must be (batch, audio_channels, samples), got shape {tuple(x.shape)}")
        posterior = OobleckDiagonalGaussianDistribution(self._batched(self._encode, x))
        return AutoencoderOobleckOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None):
        """Latents ``(B, decoder_input_channels, t)`` -> waveforms ``(B, audio_channels, t * hop_length)``."""
        if z.ndim != 3:
            raise ValueError(f"z must be (batch, latent_channels, frames), got shape {tuple(z.shape)}")
        decoded = self._batched(self._decode, z)
        return OobleckDecoderOutput(sample=decoded) if return_dict else (decoded,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None):
        """Encode then decode (the posterior mean, or a sample with ``sample_posterior``)."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self.decode(z).sample
        return OobleckDecoderOutput(sample=decoded) if return_dict else (decoded,)
