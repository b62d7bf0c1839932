"""IP-Adapter (Ye et al. 2023, "IP-Adapter: Text Compatible Image Prompt Adapter for Text-to-Image Diffusion
Models", arXiv:2308.06721) for kernel's UNet and Flux pipelines (the ``kernel-ip-adapter`` distribution).

``IPAdapterMixin`` gives a UNet pipeline Diffusers' ``load_ip_adapter`` / ``set_ip_adapter_scale`` /
``unload_ip_adapter`` / ``prepare_ip_adapter_image_embeds`` and the ``ip_adapter_image`` /
``ip_adapter_image_embeds`` call arguments (FaceID and FaceID Plus files take precomputed face
embeddings); ``IPAdapter`` is the same change on a bare UNet as a :class:`kernel.protocols.Adapter`.  ``FluxIPAdapterMixin`` / ``FluxIPAdapter`` are the same for the Flux
pipelines and transformer (XLabs' Flux IP-Adapter, with ``negative_ip_adapter_image(_embeds)`` for true
classifier-free guidance).  See ``docs/adapters.md``.
"""

from kernel_ip_adapter.adapter import IPAdapter, installed, ip_processors, projection_layers
from kernel_ip_adapter.flux_adapter import FluxIPAdapter, FluxIPAdapterAttnProcessor, convert_flux, flux_ip_processors
from kernel_ip_adapter.flux_mixin import FluxIPAdapterMixin
from kernel_ip_adapter.formats import IPAdapterFormatError, IPAdapterWeights, convert
from kernel_ip_adapter.masks import IPAdapterMaskProcessor
from kernel_ip_adapter.mixin import IMAGE_EMBEDS, IPAdapterMixin
from kernel_ip_adapter.processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0
from kernel_ip_adapter.projection import (
    ImageProjection,
    IPAdapterFaceIDImageProjection,
    IPAdapterFaceIDPlusImageProjection,
    IPAdapterFullImageProjection,
    IPAdapterPlusImageProjection,
    MultiIPAdapterImageProjection,
)

__all__ = [
    "FluxIPAdapter", "FluxIPAdapterAttnProcessor", "FluxIPAdapterMixin", "convert_flux", "flux_ip_processors",
    "IMAGE_EMBEDS", "IPAdapter", "IPAdapterAttnProcessor", "IPAdapterAttnProcessor2_0", "IPAdapterFaceIDImageProjection",
    "IPAdapterFaceIDPlusImageProjection", "IPAdapterFormatError",
    "IPAdapterFullImageProjection", "IPAdapterMaskProcessor", "IPAdapterMixin", "IPAdapterPlusImageProjection",
    "IPAdapterWeights", "ImageProjection", "MultiIPAdapterImageProjection", "convert", "installed", "ip_processors",
    "projection_layers",
]
