"""Audio for kernel: ``.wav`` export, :class:`AudioPipelineOutput`, and the AudioLDM / MusicLDM / AudioLDM 2
text-to-audio pipelines (latent diffusion over mel spectrograms, a HiFi-GAN vocoder to waveforms)."""

from __future__ import annotations

from kernel_audio.io import export_to_wav
from kernel_audio.outputs import AudioPipelineOutput

_LAZY: dict[str, str] = {
    "AudioLDMPipeline": "kernel_audio.ldm",
    "MusicLDMPipeline": "kernel_audio.ldm",
    "MelLatentDiffusionPipeline": "kernel_audio.ldm",
    "AudioLDM2Pipeline": "kernel_audio.audioldm2",
    "AudioLDM2ProjectionModel": "kernel_audio.unet_audioldm2",
    "AudioLDM2ProjectionModelOutput": "kernel_audio.unet_audioldm2",
    "AudioLDM2UNet2DConditionModel": "kernel_audio.unet_audioldm2",
}

__all__ = ["AudioPipelineOutput", "export_to_wav", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kernel_audio' has no attribute {name!r}")
