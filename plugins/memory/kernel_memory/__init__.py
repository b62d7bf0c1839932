"""Machinery shared by the quantizer plugins, and the memory switches (see ``docs/memory.md``).

* :class:`QuantizationConfig` - base of ``BitsAndBytesConfig``, ``TorchAoConfig``,
  ``GGUFQuantizationConfig`` (serialisation in Diffusers' ``config.json`` layout, the
  :class:`kernel.protocols.Quantizer` methods);
* :class:`LinearQuantizer` - swaps ``nn.Linear`` layers for a backend's layers while a model loads
  (the kernel's ``prepare`` / ``load`` hooks), or after, and back (``dequantize``);
* :class:`PipelineQuantizationConfig` - per-component configs for a pipeline load;
* :func:`enable_layerwise_casting`, :func:`enable_group_offload` - Diffusers' memory switches,
  reached as ``model.enable_layerwise_casting(...)`` / ``pipe.enable_group_offload(...)``;
* :func:`kernel_memory.planner.plan` - the pure planner behind ``pipe.enable_auto_memory``.
"""

from kernel_memory.casting import apply_layerwise_casting, enable_layerwise_casting
from kernel_memory.config import QuantizationConfig, as_dtype, dtype_name
from kernel_memory.layers import LinearQuantizer, is_kept
from kernel_memory.offload import apply_group_offloading, enable_group_offload, remove_group_offloading
from kernel_memory.pipeline_config import PipelineQuantizationConfig, backend_class, backend_names

__all__ = [
    "LinearQuantizer",
    "PipelineQuantizationConfig",
    "QuantizationConfig",
    "apply_group_offloading",
    "apply_layerwise_casting",
    "as_dtype",
    "backend_class",
    "backend_names",
    "dtype_name",
    "enable_group_offload",
    "enable_layerwise_casting",
    "is_kept",
    "remove_group_offloading",
]
