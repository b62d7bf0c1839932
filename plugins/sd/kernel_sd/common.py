"""Stable Diffusion's own prompt rule (the family-neutral checks live in :mod:`kernel.pipeline_utils`)."""

from __future__ import annotations

from kernel.pipeline_utils import batch_size_of, check_prompts

__all__ = ["check_embeds"]


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
