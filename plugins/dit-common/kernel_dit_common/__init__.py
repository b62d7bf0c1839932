"""Shared machinery of the diffusion-transformer pipelines (SD3, Flux, PixArt); see :mod:`kernel_dit_common.base`."""

from kernel_dit_common.base import (
    OUTPUT_TYPES,
    TransformerPipeline,
    batch_size_of,
    check_generators,
    check_output_type,
    check_pooled,
    check_prompts,
    check_size,
    check_strength,
    effective_batch,
    from_model_latents,
    repeat_to_batch,
    retrieve_timesteps,
    sample_latents,
    strength_timesteps,
    to_model_latents,
)

__all__ = [
    "OUTPUT_TYPES",
    "TransformerPipeline",
    "batch_size_of",
    "check_generators",
    "check_output_type",
    "check_pooled",
    "check_prompts",
    "check_size",
    "check_strength",
    "effective_batch",
    "from_model_latents",
    "repeat_to_batch",
    "retrieve_timesteps",
    "sample_latents",
    "strength_timesteps",
    "to_model_latents",
]
