"""Prompt conditioning with a T5 encoder (Raffel et al., arXiv:1910.10683) for diffusion transformers.

SD3, Flux and PixArt read the last hidden state of ``T5EncoderModel`` over the prompt padded
(and truncated) to ``max_sequence_length`` tokens.  They differ in two details, both options
here:

``use_attention_mask``
    PixArt runs the encoder with the padding mask and hands the mask to the transformer's
    cross-attention; SD3 and Flux encode without a mask and attend to the padding too.
``lowercase``
    PixArt lower-cases and strips captions before tokenizing (its caption "cleaning" without
    the optional bs4/ftfy steps).

The encoder may be absent (SD3 can drop T5 to save memory): :func:`t5_prompt_embeds` then returns
zeros of the width the transformer expects.  transformers is imported only by the tokenizer and
encoder objects the caller passes, never here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: The longest T5 sequence the released SD3 / Flux / PixArt checkpoints were trained with.
T5_MAX_SEQUENCE_LENGTH = 512


def as_prompt_list(prompt: Any, name: str = "prompt") -> list[str]:
    """A str or list of str as a list; anything else is a ``TypeError`` naming ``name``."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise TypeError(f"{name} must be a str or a list of str, got {type(prompt).__name__}")


def check_max_sequence_length(max_sequence_length: Any, limit: int = T5_MAX_SEQUENCE_LENGTH) -> int:
    """``max_sequence_length`` must be an int in ``[1, limit]``."""
    if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int):
        raise TypeError(f"max_sequence_length must be an int, got {type(max_sequence_length).__name__}")
    if not 1 <= max_sequence_length <= limit:
        raise ValueError(f"max_sequence_length must be between 1 and {limit} (the T5 encoder's limit), "
                         f"got {max_sequence_length}")
    return max_sequence_length


def repeat_per_prompt(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """Each prompt's row repeated ``n`` times, copies of one prompt adjacent."""
    return None if x is None else x.repeat_interleave(n, dim=0)


@dataclass
class T5Encoding:
    """Encoded prompts: ``embeds (B, L, D)`` and the ``mask (B, L)`` of real (1) vs padding (0) tokens."""

    embeds: torch.Tensor
    mask: torch.Tensor | None


def _warn_truncation(tokenizer, prompts: list[str], ids: torch.Tensor, cut: int) -> None:
    full = tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > ids.shape[-1]:
        dropped = tokenizer.batch_decode(full[:, cut - 1:-1])
        logger.warning("prompt truncated to max_sequence_length=%d T5 tokens; dropped: %s", ids.shape[-1], dropped)


def t5_encode(
    tokenizer,
    text_encoder,
    prompts: list[str],
    max_sequence_length: int,
    device: torch.device | str | None = None,
    *,
    use_attention_mask: bool = False,
    lowercase: bool = False,
    warn_cut: int | None = None,
) -> T5Encoding:
    """Tokenize (pad and truncate to ``max_sequence_length``) and run the encoder once."""
    if tokenizer is None or text_encoder is None:
        raise ValueError("a T5 tokenizer and text encoder are needed to encode text prompts; pass prompt_embeds instead")
    if lowercase:
        prompts = [p.lower().strip() for p in prompts]
    batch = tokenizer(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                      add_special_tokens=True, return_tensors="pt")
    _warn_truncation(tokenizer, prompts, batch.input_ids, warn_cut or max_sequence_length)
    mask = batch.attention_mask.to(device) if use_attention_mask else None
    hidden = text_encoder(batch.input_ids.to(device), attention_mask=mask)[0]
    return T5Encoding(hidden, batch.attention_mask.to(device))


def t5_prompt_embeds(
    tokenizer,
    text_encoder,
    prompt: str | list[str],
    max_sequence_length: int = 256,
    num_images_per_prompt: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    *,
    width: int | None = None,
    warn_cut: int | None = None,
) -> torch.Tensor:
    """SD3 / Flux T5 embeddings ``(B * num_images_per_prompt, max_sequence_length, D)`` (no mask).

    Without an encoder the result is zeros of feature ``width`` (the transformer's
    ``joint_attention_dim``) in ``dtype``.
    """
    prompts = as_prompt_list(prompt)
    if text_encoder is None:
        if width is None:
            raise ValueError("without a T5 text encoder, give width= (the transformer's joint_attention_dim)")
        return torch.zeros(len(prompts) * num_images_per_prompt, max_sequence_length, width, device=device, dtype=dtype)
    out = t5_encode(tokenizer, text_encoder, prompts, max_sequence_length, device, warn_cut=warn_cut)
    embeds = out.embeds.to(dtype=text_encoder.dtype, device=device)
    return repeat_per_prompt(embeds, num_images_per_prompt)


class T5PromptConditioner:
    """A tokenizer and ``T5EncoderModel`` with the PixArt-style interface (embeddings plus masks).

    ``encode_prompt(prompt, do_classifier_free_guidance, negative_prompt, num_images_per_prompt, ...)``
    returns ``(prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask)``.
    """

    component_kind = "conditioner"

    def __init__(self, tokenizer, text_encoder, max_sequence_length: int = 120, use_attention_mask: bool = True,
                 lowercase: bool = True) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_sequence_length = check_max_sequence_length(max_sequence_length)
        self.use_attention_mask = use_attention_mask
        self.lowercase = lowercase

    def encode_prompt(self, prompt, do_classifier_free_guidance: bool = True, negative_prompt: Any = "",
                      num_images_per_prompt: int = 1, device=None, prompt_embeds=None, negative_prompt_embeds=None,
                      prompt_attention_mask=None, negative_prompt_attention_mask=None,
                      max_sequence_length: int | None = None, dtype: torch.dtype | None = None):
        return encode_prompt_with_mask(
            self.tokenizer, self.text_encoder, prompt, do_classifier_free_guidance, negative_prompt,
            num_images_per_prompt, device, prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
            negative_prompt_attention_mask, max_sequence_length or self.max_sequence_length,
            use_attention_mask=self.use_attention_mask, lowercase=self.lowercase, dtype=dtype)


def encode_prompt_with_mask(
    tokenizer,
    text_encoder,
    prompt,
    do_classifier_free_guidance: bool = True,
    negative_prompt: Any = "",
    num_images_per_prompt: int = 1,
    device=None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    prompt_attention_mask: torch.Tensor | None = None,
    negative_prompt_attention_mask: torch.Tensor | None = None,
    max_sequence_length: int = 120,
    *,
    use_attention_mask: bool = True,
    lowercase: bool = True,
    dtype: torch.dtype | None = None,
):
    """PixArt's prompt encoding: masked T5 states for the prompt and (with guidance) the negative prompt.

    The negative prompt is padded to the prompt embeddings' length.  ``dtype`` is used when
    there is no text encoder (Diffusers takes the transformer's).
    """
    if prompt_embeds is None:
        encoded = t5_encode(tokenizer, text_encoder, as_prompt_list(prompt), max_sequence_length, device,
                            use_attention_mask=use_attention_mask, lowercase=lowercase)
        prompt_embeds, prompt_attention_mask = encoded.embeds, encoded.mask
    elif prompt_attention_mask is None:
        raise ValueError("prompt_embeds needs prompt_attention_mask (the T5 padding mask) alongside it")
    if text_encoder is not None:
        dtype = text_encoder.dtype
    batch = prompt_embeds.shape[0]
    prompt_embeds = repeat_per_prompt(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
    prompt_attention_mask = repeat_per_prompt(prompt_attention_mask.to(device), num_images_per_prompt)

    if not do_classifier_free_guidance:
        return prompt_embeds, prompt_attention_mask, None, None
    if negative_prompt_embeds is None:
        negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else \
            as_prompt_list(negative_prompt, "negative_prompt")
        if len(negatives) != batch:
            raise ValueError(f"negative_prompt has {len(negatives)} entries but the prompt batch is {batch}; "
                             "give one negative_prompt per prompt or a single str")
        encoded = t5_encode(tokenizer, text_encoder, negatives, prompt_embeds.shape[1], device,
                            use_attention_mask=use_attention_mask, lowercase=lowercase)
        negative_prompt_embeds, negative_prompt_attention_mask = encoded.embeds, encoded.mask
    elif negative_prompt_attention_mask is None:
        raise ValueError("negative_prompt_embeds needs negative_prompt_attention_mask alongside it")
    negative_prompt_embeds = repeat_per_prompt(negative_prompt_embeds.to(dtype=dtype, device=device),
                                               num_images_per_prompt)
    negative_prompt_attention_mask = repeat_per_prompt(negative_prompt_attention_mask.to(device), num_images_per_prompt)
    return prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask
