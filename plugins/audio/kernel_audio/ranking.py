"""Ranking several generated waveforms by their CLAP audio-text similarity (as MusicLDM and
AudioLDM 2 do when more than one waveform per prompt is asked for)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """``(B, T)`` waveforms from ``orig_sr`` to ``target_sr`` Hz: soxr's high-quality resampler, the
    length fixed to ``ceil(T * target_sr / orig_sr)`` (zero-padded or cut), the dtype kept."""
    if orig_sr == target_sr:
        return audio
    import soxr

    length = math.ceil(audio.shape[-1] * float(target_sr) / orig_sr)
    out = np.zeros((audio.shape[0], length), dtype=audio.dtype)
    for i, row in enumerate(audio):
        converted = soxr.resample(row, orig_sr, target_sr, quality="soxr_hq")[:length]
        out[i, :converted.shape[0]] = converted
    return out


@torch.no_grad()
def rank_by_clap_score(audio: torch.Tensor, prompts: str | list[str], keep: int, *, tokenizer: Any, clap_model: Any,
                       feature_extractor: Any, sampling_rate: int, device: torch.device,
                       dtype: torch.dtype) -> torch.Tensor:
    """For each prompt, the ``keep`` waveforms of ``audio`` ``(N, T)`` with the highest CLAP
    similarity to it, best first, stacked prompt after prompt.

    As in Diffusers, every prompt is ranked against all ``N`` waveforms of the call (not only the
    ones generated for it).
    """
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    waves = resample(audio.numpy(), sampling_rate, feature_extractor.sampling_rate)
    features = feature_extractor(list(waves), return_tensors="pt", sampling_rate=feature_extractor.sampling_rate)
    inputs["input_features"] = features.input_features.type(dtype)
    logits = clap_model(**inputs.to(device)).logits_per_text  # (prompts, N)
    order = torch.argsort(logits, dim=1, descending=True)[:, :keep]
    return torch.index_select(audio, 0, order.reshape(-1).cpu())
