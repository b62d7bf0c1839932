"""UNet denoisers for kernel: ``UNet2DConditionModel`` (SD 1.x/2.x, SDXL, inpainting, ...) and ``UNet2DModel`` (DDPM)."""

from kernel_unet.blocks import (
    AttnDownBlock2D,
    AttnUpBlock2D,
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
    get_down_block,
    get_up_block,
)
from kernel_unet.unet_2d import UNet2DModel, UNet2DOutput
from kernel_unet.unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput

__all__ = [
    "UNet2DConditionModel", "UNet2DConditionOutput", "UNet2DModel", "UNet2DOutput", "DownBlock2D",
    "CrossAttnDownBlock2D", "AttnDownBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "AttnUpBlock2D",
    "UNetMidBlock2DCrossAttn", "get_down_block", "get_up_block",
]
