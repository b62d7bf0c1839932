"""ControlNet for kernel (Zhang et al., arXiv:2302.05543): the models (SDXL's ControlNet-Union included), one
conditioning hook per denoiser architecture (UNet, MMDiT, Flux), and Diffusers' SD 1.x/2.x, SDXL, SD3 and Flux
ControlNet pipelines as compositions of the family pipelines with a ControlNet mixin (see docs/control.md)."""

from kernel_controlnet.canny import canny  # noqa: F401  (kernel_controlnet.canny(image, low, high))
from kernel_controlnet.controlnet import (
    ControlNetConditioningEmbedding,
    ControlNetModel,
    ControlNetOutput,
    UNetControlNetBase,
)
from kernel_controlnet.controlnet_union import ControlNetUnionModel
from kernel_controlnet.controlnet_flux import FluxControlNetModel, FluxControlNetOutput, FluxMultiControlNetModel
from kernel_controlnet.controlnet_sd3 import SD3ControlNetModel, SD3ControlNetOutput, SD3MultiControlNetModel
from kernel_controlnet.flux import (
    FluxControlNetImg2ImgPipeline,
    FluxControlNetInpaintPipeline,
    FluxControlNetMixin,
    FluxControlNetPipeline,
)
from kernel_controlnet.hook import (
    ControlInputs,
    ControlNetHook,
    ControlNetUnionHook,
    FluxControlNetHook,
    MMDiTControlNetHook,
    control_keep,
)
from kernel_controlnet.mixin import ControlMixinBase, ControlNetMixin
from kernel_controlnet.multicontrolnet import MultiControlNetModel, MultiControlNetUnionModel
from kernel_controlnet.pipelines import (
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPAGInpaintPipeline,
    StableDiffusionControlNetPAGPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPAGImg2ImgPipeline,
    StableDiffusionXLControlNetPAGPipeline,
    StableDiffusionXLControlNetPipeline,
)
from kernel_controlnet.sd3 import (
    SD3ControlNetMixin,
    StableDiffusion3ControlNetInpaintingPipeline,
    StableDiffusion3ControlNetPipeline,
)
from kernel_controlnet.union import (
    ControlNetUnionMixin,
    StableDiffusionXLControlNetUnionImg2ImgPipeline,
    StableDiffusionXLControlNetUnionInpaintPipeline,
    StableDiffusionXLControlNetUnionPipeline,
)

__all__ = [
    "ControlInputs", "ControlMixinBase", "ControlNetConditioningEmbedding", "ControlNetHook", "ControlNetMixin",
    "ControlNetModel", "ControlNetOutput", "ControlNetUnionHook", "ControlNetUnionMixin", "ControlNetUnionModel",
    "FluxControlNetHook", "FluxControlNetImg2ImgPipeline", "FluxControlNetInpaintPipeline", "FluxControlNetMixin",
    "FluxControlNetModel", "FluxControlNetOutput", "FluxControlNetPipeline", "FluxMultiControlNetModel",
    "MMDiTControlNetHook", "MultiControlNetModel", "MultiControlNetUnionModel", "SD3ControlNetMixin",
    "SD3ControlNetModel", "SD3ControlNetOutput", "SD3MultiControlNetModel",
    "StableDiffusion3ControlNetInpaintingPipeline", "StableDiffusion3ControlNetPipeline",
    "StableDiffusionControlNetImg2ImgPipeline", "StableDiffusionControlNetInpaintPipeline",
    "StableDiffusionControlNetPAGInpaintPipeline", "StableDiffusionControlNetPAGPipeline",
    "StableDiffusionControlNetPipeline", "StableDiffusionXLControlNetImg2ImgPipeline",
    "StableDiffusionXLControlNetInpaintPipeline", "StableDiffusionXLControlNetPAGImg2ImgPipeline",
    "StableDiffusionXLControlNetPAGPipeline", "StableDiffusionXLControlNetPipeline",
    "StableDiffusionXLControlNetUnionImg2ImgPipeline", "StableDiffusionXLControlNetUnionInpaintPipeline",
    "StableDiffusionXLControlNetUnionPipeline", "UNetControlNetBase", "canny", "control_keep",
]
