"""The output of every audio pipeline (attribute, dict and tuple access, as Diffusers' ``AudioPipelineOutput``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kernel.outputs import BaseOutput


@dataclass
class AudioPipelineOutput(BaseOutput):
    """``audios``: waveforms in [-1, 1] as a NumPy array or a tensor, ``(B, T)`` for mono models
    (AudioLDM, MusicLDM) or ``(B, C, T)`` for multi-channel ones (Dance Diffusion's stereo UNet)."""

    audios: Any
