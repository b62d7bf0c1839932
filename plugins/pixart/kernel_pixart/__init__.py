"""PixArt-alpha / PixArt-Sigma for kernel: the transformer and its pipelines."""

from kernel_pixart.transformer_pixart import PixArtTransformer2DModel

__all__ = ["PixArtTransformer2DModel"]
