"""The AUTOMATIC1111 sampler catalogue for kernel.

``CATALOGUE`` (registered as the ``kernel.samplers`` entry point ``a1111``) maps each A1111
sampler name ("Euler a", "DPM++ 2M Karras", ...) to a factory ``factory(config=None) ->
scheduler``.  Samplers Diffusers has no scheduler for are implemented here:

* :class:`DPMPP2SAncestralScheduler`: "DPM++ 2S a" (+ Karras)
* :class:`DPMPP3MSDEScheduler`: "DPM++ 3M SDE"
* :class:`DPMFastScheduler`: "DPM fast"
* :class:`DPMAdaptiveScheduler`: "DPM adaptive"
"""

from kernel_samplers_a1111.catalogue import (
    CATALOGUE,
    SD_SCHEDULER_CONFIG,
    SamplerCatalogue,
    SamplerFactory,
    UnknownSamplerError,
    sampler,
    sampler_names,
)
from kernel_samplers_a1111.dpm_solver import DPMAdaptiveScheduler, DPMFastScheduler
from kernel_samplers_a1111.dpmpp_2s_ancestral import DPMPP2SAncestralScheduler
from kernel_samplers_a1111.dpmpp_3m_sde import DPMPP3MSDEScheduler

__all__ = [
    "CATALOGUE",
    "DPMAdaptiveScheduler",
    "DPMFastScheduler",
    "DPMPP2SAncestralScheduler",
    "DPMPP3MSDEScheduler",
    "SD_SCHEDULER_CONFIG",
    "SamplerCatalogue",
    "SamplerFactory",
    "UnknownSamplerError",
    "sampler",
    "sampler_names",
]
