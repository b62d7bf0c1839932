"""ControlNet for kernel (Zhang et al., arXiv:2302.05543): the models, one conditioning hook for UNet
denoisers, and Diffusers' SD 1.x/2.x and SDXL ControlNet pipelines as compositions of the family
pipelines with :class:`ControlNetMixin` (see docs/control.md)."""

from kernel_controlnet.controlnet import ControlNetConditioningEmbedding, ControlNetModel, ControlNetOutput
from kernel_controlnet.hook import ControlInputs, ControlNetHook, control_keep
from kernel_controlnet.mixin import ControlNetMixin
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

__all__ = [
    "ControlInputs", "ControlNetConditioningEmbedding", "ControlNetHook", "ControlNetMixin", "ControlNetModel",
    "ControlNetOutput", "MultiControlNetModel", "StableDiffusionControlNetImg2ImgPipeline",
    "StableDiffusionControlNetInpaintPipeline", "StableDiffusionControlNetPAGPipeline",
    "StableDiffusionControlNetPipeline", "StableDiffusionXLControlNetImg2ImgPipeline",
    "StableDiffusionXLControlNetInpaintPipeline", "StableDiffusionXLControlNetPAGPipeline",
    "StableDiffusionXLControlNetPipeline", "control_keep",
]
