"""Stable Diffusion 3 / 3.5 for kernel: the MMDiT transformer and its pipelines."""

from kernel_sd3.pipelines import (
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3InpaintPipeline,
    StableDiffusion3PAGImg2ImgPipeline,
    StableDiffusion3PAGPipeline,
    StableDiffusion3Pipeline,
    StableDiffusion3PipelineOutput,
)
from kernel_sd3.transformer_sd3 import JointTransformerBlock, SD3Transformer2DModel

__all__ = [
    "JointTransformerBlock",
    "SD3Transformer2DModel",
    "StableDiffusion3Img2ImgPipeline",
    "StableDiffusion3InpaintPipeline",
    "StableDiffusion3PAGImg2ImgPipeline",
    "StableDiffusion3PAGPipeline",
    "StableDiffusion3Pipeline",
    "StableDiffusion3PipelineOutput",
]
