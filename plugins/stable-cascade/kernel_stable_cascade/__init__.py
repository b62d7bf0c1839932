"""Stable Cascade (Würstchen v3) for kernel: the stage B / stage C UNet and the stage A Paella VQ autoencoder."""

from kernel_stable_cascade.unet_stable_cascade import StableCascadeUNet, StableCascadeUNetOutput

from kernel_stable_cascade.paella_vq_model import PaellaVQModel
from kernel_stable_cascade.scheduler import DDPMWuerstchenScheduler

__all__ = ["DDPMWuerstchenScheduler", "PaellaVQModel", "StableCascadeUNet", "StableCascadeUNetOutput"]
