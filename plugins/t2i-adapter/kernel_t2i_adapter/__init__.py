"""T2I-Adapter for kernel (Mou et al., arXiv:2302.08453): the adapter models, one conditioning hook for UNet
denoisers, and Diffusers' SD 1.x/2.x and SDXL adapter pipelines as compositions of the family pipelines with
:class:`T2IAdapterMixin` (see docs/control.md)."""

from kernel_t2i_adapter.adapter import T2IAdapter
from kernel_t2i_adapter.hook import AdapterInputs, T2IAdapterHook, adapter_steps
from kernel_t2i_adapter.mixin import T2IAdapterMixin, adapter_input
from kernel_t2i_adapter.multiadapter import MultiAdapter
from kernel_t2i_adapter.pipelines import (
    StableDiffusionAdapterPipeline,
    StableDiffusionAdapterPipelineOutput,
    StableDiffusionXLAdapterPipeline,
)

__all__ = [
    "AdapterInputs", "MultiAdapter", "StableDiffusionAdapterPipeline", "StableDiffusionAdapterPipelineOutput",
    "StableDiffusionXLAdapterPipeline", "T2IAdapter", "T2IAdapterHook", "T2IAdapterMixin", "adapter_input",
    "adapter_steps",
]
