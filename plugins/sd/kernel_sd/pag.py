"""Perturbed-attention guidance variants of the SD 1.x/2.x and SDXL pipelines (Diffusers' class names).

Each is the family pipeline plus :class:`kernel_guiders.PAGMixin`: the same loop and tasks, with the
guider switched to :class:`kernel_guiders.PerturbedAttentionGuidance` by ``pag_scale`` /
``pag_adaptive_scale``.  ``pag_applied_layers`` defaults to ``"mid"``, as in Diffusers.
"""

from kernel_guiders import PAGMixin

from kernel_sd.sd import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline
from kernel_sd.sdxl import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline


class StableDiffusionPAGPipeline(PAGMixin, StableDiffusionPipeline):
    """Text-to-image with perturbed-attention guidance."""


class StableDiffusionPAGImg2ImgPipeline(PAGMixin, StableDiffusionImg2ImgPipeline):
    """Image-to-image with perturbed-attention guidance."""


class StableDiffusionPAGInpaintPipeline(PAGMixin, StableDiffusionInpaintPipeline):
    """Inpainting with perturbed-attention guidance."""


class StableDiffusionXLPAGPipeline(PAGMixin, StableDiffusionXLPipeline):
    """SDXL text-to-image with perturbed-attention guidance."""


class StableDiffusionXLPAGImg2ImgPipeline(PAGMixin, StableDiffusionXLImg2ImgPipeline):
    """SDXL image-to-image with perturbed-attention guidance."""


class StableDiffusionXLPAGInpaintPipeline(PAGMixin, StableDiffusionXLInpaintPipeline):
    """SDXL inpainting with perturbed-attention guidance."""
