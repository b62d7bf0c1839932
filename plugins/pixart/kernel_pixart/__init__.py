"""PixArt-alpha / PixArt-Sigma for kernel: the transformer and its pipelines."""

from kernel_pixart.aspect_ratios import (
    ASPECT_RATIO_256_BIN,
    ASPECT_RATIO_512_BIN,
    ASPECT_RATIO_1024_BIN,
    ASPECT_RATIO_2048_BIN,
)
from kernel_pixart.pipelines import ImagePipelineOutput, PixArtAlphaPipeline, PixArtSigmaPAGPipeline, PixArtSigmaPipeline
from kernel_pixart.transformer_pixart import PixArtTransformer2DModel

__all__ = [
    "ASPECT_RATIO_1024_BIN",
    "ASPECT_RATIO_2048_BIN",
    "ASPECT_RATIO_256_BIN",
    "ASPECT_RATIO_512_BIN",
    "ImagePipelineOutput",
    "PixArtAlphaPipeline",
    "PixArtSigmaPAGPipeline",
    "PixArtSigmaPipeline",
    "PixArtTransformer2DModel",
]
