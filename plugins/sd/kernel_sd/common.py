"""Pieces every Stable Diffusion pipeline shares: schedules, guidance, VAE encoding, validation.

The family-neutral helpers live in :mod:`kernel.pipeline_utils` and are re-exported here so
``from kernel_sd.common import ...`` keeps working; the prompt and mask rules below are SD's own.
"""

from __future__ import annotations

from typing import Any

import torch

from kernel.pipeline_utils import (
    batch_size_of,
    check_callback_inputs,
    check_denoising_window,
    check_generators,
    check_prompts,
    check_size,
    check_steps_left,
    check_strength,
    cutoff_timestep,
    encode_latents,
    guidance_embedding,
    latents_of,
    rescale_noise_cfg,
    retrieve_timesteps,
    step_kwargs,
    strength_timesteps,
    truncate_for_denoising_end,
)
from kernel.pipeline_utils import is_open_fraction as _is_fraction  # noqa: F401 - kernel_sd.sdxl imports it
from kernel.scheduling import randn_tensor

__all__ = [
    "batch_size_of",
    "check_callback_inputs",
    "check_denoising_window",
    "check_embeds",
    "check_generators",
    "check_size",
    "check_steps_left",
    "check_strength",
    "cutoff_timestep",
    "encode_latents",
    "guidance_embedding",
    "latents_of",
    "randn_tensor",
    "rescale_noise_cfg",
    "retrieve_timesteps",
    "step_kwargs",
    "strength_timesteps",
    "truncate_for_denoising_end",
]


# ---------------------------------------------------------------------------- SD's own checks
def check_embeds(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, *, suffix: str = "",
                 prompt_2=None, negative_prompt_2=None) -> None:
    """The prompt/embeddings rules every SD pipeline shares (:func:`kernel.pipeline_utils.check_prompts`)
    plus one ``negative_prompt`` per prompt when it is a list."""
    check_prompts({"prompt": prompt, "prompt_2": prompt_2}, prompt_embeds,
                  {"negative_prompt": negative_prompt, "negative_prompt_2": negative_prompt_2}, negative_prompt_embeds)
    if isinstance(negative_prompt, list):
        batch = batch_size_of(prompt, prompt_embeds)
        if len(negative_prompt) != batch:
            raise ValueError(
                f"negative_prompt has {len(negative_prompt)} entries but the prompt batch size is {batch}; "
                "give one negative_prompt per prompt or a single str"
            )
