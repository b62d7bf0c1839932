"""Dance Diffusion (Harmonai): unconditional diffusion straight on stereo waveforms with a 1-D UNet."""

from kernel_dance_diffusion.pipeline import DanceDiffusionPipeline
from kernel_dance_diffusion.unet_1d import UNet1DModel, UNet1DOutput

__all__ = ["DanceDiffusionPipeline", "UNet1DModel", "UNet1DOutput"]
