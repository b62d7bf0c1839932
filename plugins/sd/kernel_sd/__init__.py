"""Stable Diffusion 1.x/2.x and XL pipelines, DDPM/DDIM, and the task auto-pipelines for kernel."""

from kernel_sd.auto import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image
from kernel_sd.pag import (
    StableDiffusionPAGImg2ImgPipeline,
    StableDiffusionPAGInpaintPipeline,
    StableDiffusionPAGPipeline,
    StableDiffusionXLPAGImg2ImgPipeline,
    StableDiffusionXLPAGInpaintPipeline,
    StableDiffusionXLPAGPipeline,
)
from kernel_sd.outputs import ImagePipelineOutput, StableDiffusionPipelineOutput, StableDiffusionXLPipelineOutput
from kernel_sd.sd import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline
from kernel_sd.sdxl import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from kernel_sd.unconditional import DDIMPipeline, DDPMPipeline

__all__ = [
    "AutoPipelineForImage2Image",
    "AutoPipelineForInpainting",
    "AutoPipelineForText2Image",
    "DDIMPipeline",
    "DDPMPipeline",
    "ImagePipelineOutput",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionPipeline",
    "StableDiffusionPipelineOutput",
    "StableDiffusionPAGImg2ImgPipeline",
    "StableDiffusionPAGInpaintPipeline",
    "StableDiffusionPAGPipeline",
    "StableDiffusionXLPAGImg2ImgPipeline",
    "StableDiffusionXLPAGInpaintPipeline",
    "StableDiffusionXLPAGPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLPipelineOutput",
]
