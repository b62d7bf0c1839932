"""Stable Diffusion 3 / 3.5 for kernel: the MMDiT transformer and its pipelines."""

from kernel_sd3.transformer_sd3 import JointTransformerBlock, SD3Transformer2DModel

__all__ = ["JointTransformerBlock", "SD3Transformer2DModel"]
