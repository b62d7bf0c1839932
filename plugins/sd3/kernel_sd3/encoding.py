"""SD3 prompt encoding: two CLIP encoders and T5, joined the way the MMDiT was trained.

Sequence conditioning is ``[CLIP-L hidden | CLIP-G hidden]`` (penultimate layers, 77 tokens each,
concatenated on features and zero-padded to T5's width) followed by the T5 tokens; the pooled
vector is ``[CLIP-L pooled, CLIP-G pooled]``.  Without ``text_encoder_3`` the T5 part is zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernel_clip.conditioner import _encode_plain  # the shared CLIP tokenize-and-encode step
from kernel_t5 import as_prompt_list, repeat_per_prompt, t5_prompt_embeds


def clip_embeds(tokenizer, text_encoder, prompts: list[str], device, clip_skip: int | None, max_length: int):
    """Penultimate (or ``clip_skip``) hidden states ``(B, 77, D)`` and the projected pooled output ``(B, P)``."""
    if tokenizer is None or text_encoder is None:
        raise ValueError("SD3 needs both CLIP tokenizers and text encoders to encode prompts; pass prompt_embeds "
                         "and pooled_prompt_embeds instead")
    hidden, pooled = _encode_plain(tokenizer, text_encoder, prompts, max_length, device, "penultimate", clip_skip,
                                   False, warn=True)
    return hidden, pooled


def encode_sd3(pipe, prompt, prompt_2, prompt_3, device, num_images_per_prompt: int, clip_skip: int | None,
               max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds (B*n, 77+L, D_t5), pooled (B*n, P_l + P_g))`` for one set of texts."""
    prompts = as_prompt_list(prompt)
    second = as_prompt_list(prompt_2 or prompt, "prompt_2")
    third = as_prompt_list(prompt_3 or prompt, "prompt_3")
    dtype = pipe.text_encoder.dtype if pipe.text_encoder is not None else None
    limit = pipe.tokenizer_max_length
    h1, p1 = clip_embeds(pipe.tokenizer, pipe.text_encoder, prompts, device, clip_skip, limit)
    h2, p2 = clip_embeds(pipe.tokenizer_2, pipe.text_encoder_2, second, device, clip_skip, limit)
    clip_hidden = torch.cat([h1, h2], dim=-1).to(dtype=dtype, device=device)
    t5 = t5_prompt_embeds(pipe.tokenizer_3, pipe.text_encoder_3, third, max_sequence_length, num_images_per_prompt,
                          device, dtype=dtype, width=pipe.transformer.config.joint_attention_dim, warn_cut=limit)
    clip_hidden = F.pad(clip_hidden, (0, t5.shape[-1] - clip_hidden.shape[-1]))
    embeds = torch.cat([repeat_per_prompt(clip_hidden, num_images_per_prompt), t5], dim=-2)
    pooled = repeat_per_prompt(torch.cat([p1, p2], dim=-1), num_images_per_prompt)
    return embeds, pooled


def _negatives(negative, batch_size: int, name: str) -> list[str]:
    if isinstance(negative, str):
        return [negative] * batch_size
    out = as_prompt_list(negative, name)
    if len(out) != batch_size:
        raise ValueError(f"{name} has {len(out)} entries but the prompt batch size is {batch_size}; "
                         f"give one {name} per prompt or a single str")
    return out


def encode_prompt(pipe, prompt, prompt_2=None, prompt_3=None, device=None, num_images_per_prompt: int = 1,
                  do_classifier_free_guidance: bool = True, negative_prompt=None, negative_prompt_2=None,
                  negative_prompt_3=None, prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                  negative_pooled_prompt_embeds=None, clip_skip: int | None = None, max_sequence_length: int = 256,
                  lora_scale: float | None = None):
    """Diffusers' ``StableDiffusion3Pipeline.encode_prompt`` contract: four tensors (negatives ``None`` without CFG)."""
    device = device or pipe._execution_device
    if prompt is not None:
        batch_size = len(as_prompt_list(prompt))
    else:
        batch_size = prompt_embeds.shape[0]
    if prompt_embeds is None:
        prompt_embeds, pooled_prompt_embeds = encode_sd3(pipe, prompt, prompt_2, prompt_3, device,
                                                         num_images_per_prompt, clip_skip, max_sequence_length)
    if do_classifier_free_guidance and negative_prompt_embeds is None:
        if prompt is not None and negative_prompt is not None and type(prompt) is not type(negative_prompt):
            raise TypeError(f"negative_prompt must have the same type as prompt ({type(prompt).__name__}), "
                            f"got {type(negative_prompt).__name__}")
        first = negative_prompt or ""
        n1 = _negatives(first, batch_size, "negative_prompt")
        n2 = _negatives(negative_prompt_2 or first, batch_size, "negative_prompt_2")
        n3 = _negatives(negative_prompt_3 or first, batch_size, "negative_prompt_3")
        negative_prompt_embeds, negative_pooled_prompt_embeds = encode_sd3(
            pipe, n1, n2, n3, device, num_images_per_prompt, None, max_sequence_length)
    return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds
