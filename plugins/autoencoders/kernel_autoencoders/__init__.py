"""Image autoencoders for kernel: ``AutoencoderKL`` (SD / SDXL VAE) and ``AutoencoderTiny`` (TAESD)."""

from kernel_autoencoders.autoencoder_kl import (
    AutoencoderKL,
    AutoencoderKLOutput,
    Decoder,
    DecoderOutput,
    DiagonalGaussianDistribution,
    Encoder,
)
from kernel_autoencoders.autoencoder_tiny import AutoencoderTiny, AutoencoderTinyOutput, DecoderTiny, EncoderTiny

__all__ = [
    "AutoencoderKL", "AutoencoderKLOutput", "Decoder", "DecoderOutput", "DiagonalGaussianDistribution", "Encoder",
    "AutoencoderTiny", "AutoencoderTinyOutput", "DecoderTiny", "EncoderTiny",
]
