"""IP-Adapter (Ye et al. 2023, "IP-Adapter: Text Compatible Image Prompt Adapter for Text-to-Image Diffusion
Models", arXiv:2308.06721) for kernel's UNet pipelines (the ``kernel-ip-adapter`` distribution).

``IPAdapterMixin`` gives a pipeline Diffusers' ``load_ip_adapter`` / ``set_ip_adapter_scale`` /
``unload_ip_adapter`` / ``prepare_ip_adapter_image_embeds`` and the ``ip_adapter_image`` /
``ip_adapter_image_embeds`` call arguments; ``IPAdapter`` is the same change on a bare UNet as a
:class:`kernel.protocols.Adapter`.  See ``docs/adapters.md``.
"""

from kernel_ip_adapter.adapter import IPAdapter, installed, ip_processors, projection_layers
from kernel_ip_adapter.formats import IPAdapterFormatError, IPAdapterWeights, convert
from kernel_ip_adapter.masks import IPAdapterMaskProcessor
from kernel_ip_adapter.mixin import IMAGE_EMBEDS, IPAdapterMixin
from kernel_ip_adapter.processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0
from kernel_ip_adapter.projection import (
    ImageProjection,
    IPAdapterFullImageProjection,
    IPAdapterPlusImageProjection,
    MultiIPAdapterImageProjection,
)

__all__ = [
    "IMAGE_EMBEDS", "IPAdapter", "IPAdapterAttnProcessor", "IPAdapterAttnProcessor2_0", "IPAdapterFormatError",
    "IPAdapterFullImageProjection", "IPAdapterMaskProcessor", "IPAdapterMixin", "IPAdapterPlusImageProjection",
    "IPAdapterWeights", "ImageProjection", "MultiIPAdapterImageProjection", "convert", "installed", "ip_processors",
    "projection_layers",
]
