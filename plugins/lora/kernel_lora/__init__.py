"""LoRA for kernel pipelines, over peft (Hu et al. 2021, "LoRA: Low-Rank Adaptation", arXiv:2106.09685).

* :class:`LoraLoaderMixin` - Diffusers' pipeline methods (``load_lora_weights``, ``set_adapters``,
  ``fuse_lora``, ``unload_lora_weights``, ``save_lora_weights`` ...), mixed into the SD / SDXL pipelines.
* :class:`LoraAdapter` - one LoRA for one model as a :class:`kernel.protocols.Adapter`.
* :func:`kernel_lora.formats.parse` - Diffusers/peft, attention-processor and kohya-ss layouts.

See ``docs/adapters.md``.
"""

from kernel_lora.adapter import LoraAdapter
from kernel_lora.formats import LoraFormatError, LoraWeight, parse
from kernel_lora.mixin import LoraLoaderMixin, StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin
from kernel_lora.source import LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_SAFE

__all__ = [
    "LoraAdapter",
    "LoraFormatError",
    "LoraLoaderMixin",
    "LoraWeight",
    "StableDiffusionLoraLoaderMixin",
    "StableDiffusionXLLoraLoaderMixin",
    "LORA_WEIGHT_NAME",
    "LORA_WEIGHT_NAME_SAFE",
    "parse",
]
