"""PixArt-alpha / PixArt-Sigma for kernel: the transformer and its pipelines."""

from kernel_pixart.transformer_pixart import PixArtTransformer2DModel, PixArtTransformerBlock

__all__ = ["PixArtTransformer2DModel", "PixArtTransformerBlock"]
