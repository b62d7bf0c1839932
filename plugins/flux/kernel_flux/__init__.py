"""Flux.1 for kernel: the transformer and its pipelines."""

from kernel_flux.transformer_flux import FluxSingleTransformerBlock, FluxTransformer2DModel, FluxTransformerBlock

__all__ = ["FluxSingleTransformerBlock", "FluxTransformer2DModel", "FluxTransformerBlock"]
