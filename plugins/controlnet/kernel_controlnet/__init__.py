"""ControlNet for kernel (Zhang et al., arXiv:2302.05543): the models, one conditioning hook per denoiser
architecture (UNet, MMDiT, Flux), and Diffusers' SD 1.x/2.x, SDXL, SD3 and Flux ControlNet pipelines as
compositions of the family pipelines with a ControlNet mixin (see docs/control.md)."""

from kernel_controlnet.canny import canny  # noqa: F401  (kernel_controlnet.canny(image, low, high))
from kernel_controlnet.controlnet import ControlNetConditioningEmbedding, ControlNetModel, ControlNetOutput
from kernel_controlnet.controlnet_flux import FluxControlNetModel, FluxControlNetOutput, FluxMultiControlNetModel
from kernel_controlnet.controlnet_sd3 import SD3ControlNetModel, SD3ControlNetOutput, SD3MultiControlNetModel
from kernel_controlnet.flux import (
    FluxControlNetImg2ImgPipeline,
    FluxControlNetInpaintPipeline,
    FluxControlNetMixin,
    FluxControlNetPipeline,
)
from kernel_controlnet.hook import ControlInputs, ControlNetHook, FluxControlNetHook, MMDiTControlNetHook, control_keep
from kernel_controlnet.mixin import ControlMixinBase, ControlNetMixin
from kernel_controlnet.multicontrolnet import MultiControlNetModel
from kernel_controlnet.pipelines import (
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPAGPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPAGPipeline,
    StableDiffusionXLControlNetPipeline,
)
from kernel_controlnet.sd3 import (
    SD3ControlNetMixin,
    StableDiffusion3ControlNetInpaintingPipeline,
    StableDiffusion3ControlNetPipeline,
)

__all__ = [
    "ControlInputs", "ControlMixinBase", "ControlNetConditioningEmbedding", "ControlNetHook", "ControlNetMixin",
    "ControlNetModel", "ControlNetOutput", "FluxControlNetHook", "FluxControlNetImg2ImgPipeline",
    "FluxControlNetInpaintPipeline", "FluxControlNetMixin", "FluxControlNetModel", "FluxControlNetOutput",
    "FluxControlNetPipeline", "FluxMultiControlNetModel", "MMDiTControlNetHook", "MultiControlNetModel",
    "SD3ControlNetMixin", "SD3ControlNetModel", "SD3ControlNetOutput", "SD3MultiControlNetModel",
    "StableDiffusion3ControlNetInpaintingPipeline", "StableDiffusion3ControlNetPipeline",
    "StableDiffusionControlNetImg2ImgPipeline", "StableDiffusionControlNetInpaintPipeline",
    "StableDiffusionControlNetPAGPipeline", "StableDiffusionControlNetPipeline",
    "StableDiffusionXLControlNetImg2ImgPipeline", "StableDiffusionXLControlNetInpaintPipeline",
    "StableDiffusionXLControlNetPAGPipeline", "StableDiffusionXLControlNetPipeline", "control_keep",
]
