"""Flux.1 for kernel: the transformer and its pipelines."""

from kernel_flux.pipelines import (
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxPipeline,
    FluxPipelineOutput,
    latent_image_ids,
    pack_latents,
    unpack_latents,
)
from kernel_flux.transformer_flux import FluxSingleTransformerBlock, FluxTransformer2DModel, FluxTransformerBlock

__all__ = [
    "FluxImg2ImgPipeline",
    "FluxInpaintPipeline",
    "FluxPipeline",
    "FluxPipelineOutput",
    "FluxSingleTransformerBlock",
    "FluxTransformer2DModel",
    "FluxTransformerBlock",
    "latent_image_ids",
    "pack_latents",
    "unpack_latents",
]
