"""Stable Audio Open (Evans et al. 2024, arXiv:2407.14358): a diffusion transformer over the 1-D latents of
the Oobleck waveform autoencoder, conditioned on T5 text and on the start/total seconds of the clip."""

from kernel_stable_audio.oobleck import AutoencoderOobleck, AutoencoderOobleckOutput, OobleckDecoderOutput
from kernel_stable_audio.pipeline import StableAudioPipeline
from kernel_stable_audio.projection import StableAudioProjectionModel, StableAudioProjectionModelOutput
from kernel_stable_audio.transformer import StableAudioDiTModel, stable_audio_rotary_embedding

__all__ = ["AutoencoderOobleck", "AutoencoderOobleckOutput", "OobleckDecoderOutput", "StableAudioDiTModel",
           "StableAudioPipeline", "StableAudioProjectionModel", "StableAudioProjectionModelOutput",
           "stable_audio_rotary_embedding"]
