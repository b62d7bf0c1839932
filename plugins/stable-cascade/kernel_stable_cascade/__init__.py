"""Stable Cascade (Würstchen v3) for kernel: the stage B / stage C UNet."""

from kernel_stable_cascade.unet_stable_cascade import StableCascadeUNet, StableCascadeUNetOutput

__all__ = ["StableCascadeUNet", "StableCascadeUNetOutput"]
