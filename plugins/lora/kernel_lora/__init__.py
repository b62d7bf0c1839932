"""LoRA for kernel pipelines, over peft (Hu et al. 2021, "LoRA: Low-Rank Adaptation", arXiv:2106.09685).

* :class:`LoraLoaderMixin` - Diffusers' pipeline methods (``load_lora_weights``, ``set_adapters``,
  ``fuse_lora``, ``unload_lora_weights``, ``save_lora_weights`` ...), mixed into the SD / SDXL pipelines;
  :class:`SD3LoraLoaderMixin`, :class:`FluxLoraLoaderMixin`, :class:`PixArtLoraLoaderMixin` for the
  transformer pipelines (``joint_attention_kwargs={"scale": s}``).
* :class:`LoraAdapter` - one LoRA for one model as a :class:`kernel.protocols.Adapter`.
* :func:`kernel_lora.formats.parse` - Diffusers/peft, attention-processor, kohya-ss and XLabs (Flux) layouts.

See ``docs/adapters.md``.
"""

from kernel_lora.adapter import LoraAdapter
from kernel_lora.families import FluxLoraLoaderMixin, PixArtLoraLoaderMixin, SD3LoraLoaderMixin
from kernel_lora.formats import LoraFormatError, LoraWeight, parse
from kernel_lora.mixin import LoraLoaderMixin, StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin
from kernel_lora.source import LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_SAFE

__all__ = [
    "FluxLoraLoaderMixin",
    "LoraAdapter",
    "LoraFormatError",
    "LoraLoaderMixin",
    "LoraWeight",
    "PixArtLoraLoaderMixin",
    "SD3LoraLoaderMixin",
    "StableDiffusionLoraLoaderMixin",
    "StableDiffusionXLLoraLoaderMixin",
    "LORA_WEIGHT_NAME",
    "LORA_WEIGHT_NAME_SAFE",
    "parse",
]
