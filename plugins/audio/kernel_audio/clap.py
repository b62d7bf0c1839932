"""CLAP text conditioning (Wu et al. 2023, "Large-scale Contrastive Language-Audio Pretraining",
arXiv:2211.06687) for the mel-spectrogram latent diffusion pipelines.

AudioLDM and MusicLDM condition their UNet on one vector per prompt: CLAP's projected text
embedding, L2-normalised, given to the UNet as its class embedding.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def text_dtype(text_encoder: Any) -> torch.dtype:
    """The text branch's dtype (a ``ClapModel``'s own ``dtype`` can be the float64 of its logit scales)."""
    return getattr(text_encoder, "text_model", text_encoder).dtype


def clap_text_embeds(tokenizer: Any, text_encoder: Any, texts: list[str], device: torch.device) -> torch.Tensor:
    """``(len(texts), projection_dim)`` unit-norm CLAP text embeddings.

    Works with a ``ClapTextModelWithProjection`` (its ``text_embeds``) and a full ``ClapModel``
    (``get_text_features``, which returns a tensor in transformers 4 and an output whose
    ``pooler_output`` holds the features in transformers 5).
    """
    max_length = tokenizer.model_max_length
    tokens = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    longest = tokenizer(texts, padding="longest", return_tensors="pt").input_ids
    if longest.shape[-1] > tokens.input_ids.shape[-1]:
        dropped = tokenizer.batch_decode(longest[:, max_length - 1:-1])
        logger.warning("CLAP reads at most %d tokens; this part of the prompt was cut: %s", max_length, dropped)
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    if hasattr(text_encoder, "get_text_features"):
        features = text_encoder.get_text_features(ids, attention_mask=mask)
        if not isinstance(features, torch.Tensor):
            features = features.pooler_output
        return features  # already normalised by CLAP
    return F.normalize(text_encoder(ids, attention_mask=mask).text_embeds, dim=-1)


def negative_texts(prompt: Any, negative_prompt: Any, batch: int) -> list[str]:
    """The negative prompt as one text per prompt (``""`` when none is given)."""
    if negative_prompt is None:
        return [""] * batch
    if isinstance(negative_prompt, str):
        return [negative_prompt] * batch
    if not isinstance(negative_prompt, list) or not all(isinstance(t, str) for t in negative_prompt):
        raise TypeError(f"negative_prompt must be a str or a list of str, got {type(negative_prompt).__name__}")
    if len(negative_prompt) != batch:
        raise ValueError(f"negative_prompt has {len(negative_prompt)} entries for {batch} prompts; pass one "
                         "negative prompt per prompt, or a single str")
    return negative_prompt
