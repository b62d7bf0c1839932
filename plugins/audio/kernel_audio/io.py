"""Writing waveforms to ``.wav`` files."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from kernel.io import atomic_path

#: soundfile subtypes by what the caller asks for; float32 keeps the samples exactly.
SUBTYPES = ("FLOAT", "PCM_16", "PCM_24", "PCM_32", "DOUBLE")


def _as_array(audio: Any) -> np.ndarray:
    if hasattr(audio, "detach"):  # a torch tensor; no torch import needed here
        audio = audio.detach().float().cpu().numpy()
    if not isinstance(audio, np.ndarray):
        raise TypeError(f"audio must be a NumPy array or a torch.Tensor, got {type(audio).__name__}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise TypeError(f"audio must hold floating-point samples in [-1, 1], got dtype {audio.dtype}")
    return audio


def export_to_wav(audio: Any, output_path: str | os.PathLike, sampling_rate: int, subtype: str = "FLOAT") -> str:
    """Write one waveform to ``output_path`` as a ``.wav`` file and return the path.

    ``audio``: ``(T,)`` mono or ``(C, T)`` with ``C`` channels (one item of a pipeline's ``audios``),
    a NumPy array or a tensor of floats in [-1, 1].  ``sampling_rate``: samples per second (the
    vocoder's ``config.sampling_rate`` for AudioLDM/MusicLDM, the UNet's ``config.sample_rate`` for
    Dance Diffusion).  ``subtype``: ``"FLOAT"`` (32-bit float, lossless) or ``"PCM_16"`` /
    ``"PCM_24"`` / ``"PCM_32"`` / ``"DOUBLE"``.  The file is written next to the target and renamed
    onto it, so an error never leaves a half-written file.
    """
    import soundfile

    samples = _as_array(audio)
    if samples.ndim == 2 and samples.shape[0] > samples.shape[1]:
        raise ValueError(f"audio of shape {samples.shape} looks like (T, C); pass (C, T) (channels first, as the "
                         "pipelines return them) or a (T,) mono waveform")
    if samples.ndim not in (1, 2) or samples.size == 0:
        raise ValueError(f"audio must be a (T,) mono or (C, T) multi-channel waveform with samples, got shape "
                         f"{samples.shape}; pick one item of a batch, e.g. output.audios[0]")
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive int (samples per second), got {sampling_rate!r}")
    if subtype not in SUBTYPES:
        raise ValueError(f"subtype={subtype!r} is not supported; use one of {list(SUBTYPES)}")
    if not np.all(np.isfinite(samples)):
        raise ValueError("audio holds NaN or infinite samples")
    frames = samples if samples.ndim == 1 else samples.T  # soundfile takes (frames, channels)
    with atomic_path(output_path) as tmp:
        soundfile.write(str(tmp), frames, int(sampling_rate), subtype=subtype, format="WAV")
    return str(output_path)
