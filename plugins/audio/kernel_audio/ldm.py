"""Text-to-audio latent diffusion over mel spectrograms: AudioLDM (Liu et al. 2023, arXiv:2301.12503)
and MusicLDM (Chen et al. 2023, arXiv:2308.01546).

A UNet denoises VAE latents of a log-mel spectrogram ``(frames, mel bins)``, conditioned through its
class embedding on one CLAP text vector per prompt; the VAE decodes the spectrogram and a HiFi-GAN
vocoder (``SpeechT5HifiGan``) turns it into a waveform.  The loop, guidance and text-to-image task
come from the kernel (:mod:`kernel.tasks`); this module supplies the family hooks: CLAP encoding,
the UNet evaluation, the latent grid from ``audio_length_in_s`` and the decoding to waveforms.
"""

from __future__ import annotations

import logging
import math
from numbers import Real
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch

from kernel.engine import Conditioning
from kernel.pipeline import DiffusionPipeline
from kernel.pipeline_utils import check_output_type, check_prompts

from kernel_audio.clap import clap_text_embeds, negative_texts, text_dtype
from kernel_audio.outputs import AudioPipelineOutput

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("np", "pt", "latent")


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


class MelLatentDiffusionPipeline(DiffusionPipeline):
    """What AudioLDM and MusicLDM share.  Not used directly."""

    pipeline_family = "audioldm"
    model_cpu_offload_seq = "text_encoder->unet->vae->vocoder"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    @property
    def vae_scale_factor(self) -> int:
        vae = getattr(self, "vae", None)
        return vae.spatial_compression_ratio if vae is not None else 8

    # ---------------------------------------------------------------- audio geometry
    def _vocoder_geometry(self) -> tuple[int, float, int]:
        """``(sampling_rate, seconds per mel frame, mel bins)`` from the vocoder's config, checked."""
        config = self.vocoder.config
        rate, rates, bins = config.sampling_rate, list(config.upsample_rates), config.model_in_dim
        if not _positive_int(rate):
            raise ValueError(f"vocoder.config.sampling_rate must be a positive int (Hz), got {rate!r}")
        if not rates or not all(_positive_int(r) for r in rates):
            raise ValueError(f"vocoder.config.upsample_rates must be positive ints, got {rates!r}")
        factor = self.vae_scale_factor
        if bins % factor != 0:
            raise ValueError(f"the vocoder reads {bins} mel bins (vocoder.config.model_in_dim), which the VAE's "
                             f"downsampling factor {factor} does not divide; use a vocoder whose mel bins match the "
                             "VAE's spectrograms (a multiple of the factor)")
        return int(rate), float(np.prod(rates)) / rate, int(bins)

    def _audio_length(self, call: SimpleNamespace) -> None:
        """Mel frames for ``audio_length_in_s`` (padded up to the VAE's multiple) and the waveform
        length to crop back to."""
        rate, frame_s, _ = self._vocoder_geometry()
        factor = self.vae_scale_factor
        length = call.audio_length_in_s
        if length is None:
            length = self.unet.config.sample_size * factor * frame_s
        if isinstance(length, bool) or not isinstance(length, Real) or not math.isfinite(length):
            raise ValueError(f"audio_length_in_s must be a number of seconds, got {length!r}")
        shortest = frame_s * factor
        if length < shortest:
            raise ValueError(f"audio_length_in_s={length} is shorter than the shortest audio this model makes: "
                             f"{shortest} s (one latent row = {factor} mel frames of {frame_s} s each)")
        frames = int(length / frame_s)
        call.audio_length_in_s = length
        call.original_waveform_length = int(length * rate)
        if frames % factor:
            frames = math.ceil(frames / factor) * factor
            logger.info("audio_length_in_s=%s is padded to %s s for the VAE and cut back after decoding",
                        length, frames * frame_s)
        call.mel_frames = frames

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        n = call.num_waveforms_per_prompt
        if not _positive_int(n):
            raise ValueError(f"num_waveforms_per_prompt must be a positive int (waveforms per prompt), got {n!r}")
        call.num_images_per_prompt = int(n)  # the engine's name for the per-prompt count
        check_output_type(call.output_type, OUTPUT_TYPES)
        if not _positive_int(call.callback_steps):
            raise ValueError(f"callback_steps must be a positive int, got {call.callback_steps!r}")
        check_prompts({"prompt": call.prompt}, call.prompt_embeds, {"negative_prompt": call.negative_prompt},
                      call.negative_prompt_embeds)
        for name in ("prompt_embeds", "negative_prompt_embeds"):
            value = getattr(call, name)
            if value is not None and (not isinstance(value, torch.Tensor) or value.ndim != 2):
                raise ValueError(f"{name} must be a (batch, projection_dim) tensor of CLAP text embeddings, got "
                                 f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
        self._audio_length(call)

    def _text_embeds(self, texts: list[str], device) -> torch.Tensor:
        return clap_text_embeds(self.tokenizer, self.text_encoder, texts, device)

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        n, dtype = call.num_images_per_prompt, text_dtype(self.text_encoder)
        texts = [call.prompt] if isinstance(call.prompt, str) else call.prompt
        positive = self._text_embeds(texts, call.device) if call.prompt_embeds is None else call.prompt_embeds
        positive = positive.to(dtype=dtype, device=call.device)
        cond = Conditioning({"prompt_embeds": positive.repeat_interleave(n, dim=0)})
        if negative:
            neg = call.negative_prompt_embeds
            if neg is None:
                neg = self._text_embeds(negative_texts(call.prompt, call.negative_prompt, positive.shape[0]),
                                        call.device)
            neg = neg.to(dtype=dtype, device=call.device)
            cond.negative = {"prompt_embeds": neg.repeat_interleave(n, dim=0)}
        return cond

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        factor = self.vae_scale_factor
        return (call.batch, self.unet.config.in_channels, call.mel_frames // factor,
                self.vocoder.config.model_in_dim // factor)

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        # One CLAP vector per waveform, through the UNet's class embedding; no cross-attention context.
        return self.unet(model_input, timestep, encoder_hidden_states=None, class_labels=cond["prompt_embeds"],
                         cross_attention_kwargs=self._call.cross_attention_kwargs, return_dict=False, **kwargs)[0]

    def _decode(self, latents: torch.Tensor, call: SimpleNamespace) -> Any:
        if call.output_type == "latent":
            return latents
        waveforms = self.mel_spectrogram_to_waveform(self._vae_decode(latents, call))
        waveforms = self._rank(waveforms[:, :call.original_waveform_length], call)
        return waveforms.numpy() if call.output_type == "np" else waveforms

    def _rank(self, waveforms: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        """Several waveforms per prompt, best first by CLAP audio-text score (pipelines with a feature_extractor
        component: MusicLDM, AudioLDM 2); the others keep the drawing order."""
        n = call.num_images_per_prompt
        if n == 1 or call.prompt is None or "feature_extractor" not in self._component_names():
            return waveforms
        if self.feature_extractor is None or not hasattr(self.text_encoder, "get_audio_features"):
            logger.info("num_waveforms_per_prompt=%d: the waveforms are not ranked, which needs a ClapModel text "
                        "encoder and a feature_extractor", n)
            return waveforms
        from kernel_audio.ranking import rank_by_clap_score

        return rank_by_clap_score(waveforms, call.prompt, n, tokenizer=self.tokenizer, clap_model=self.text_encoder,
                                  feature_extractor=self.feature_extractor, sampling_rate=self.sampling_rate,
                                  device=call.device, dtype=call.dtype)

    def _output(self, audios: Any, call: SimpleNamespace):
        if not call.return_dict:
            return (audios,)
        return AudioPipelineOutput(audios=audios)

    # ---------------------------------------------------------------- Diffusers' public helpers
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Denoised latents -> mel spectrograms ``(B, 1, frames, mel bins)``."""
        return self.vae.decode(self.vae.denormalize_latents(latents)).sample

    def mel_spectrogram_to_waveform(self, mel_spectrogram: torch.Tensor) -> torch.Tensor:
        """Mel spectrograms ``(B, [1,] frames, mel bins)`` -> float32 waveforms ``(B, T)`` on the CPU."""
        if mel_spectrogram.dim() == 4:
            mel_spectrogram = mel_spectrogram.squeeze(1)
        return self.vocoder(mel_spectrogram.to(self.vocoder.dtype)).cpu().float()

    @property
    def sampling_rate(self) -> int:
        """Samples per second of the waveforms this pipeline returns (the vocoder's)."""
        return int(self.vocoder.config.sampling_rate)


class AudioLDMPipeline(MelLatentDiffusionPipeline):
    """Text-to-audio with AudioLDM: CLAP text embeddings (``ClapTextModelWithProjection``) condition a
    ``UNet2DConditionModel`` through its class embedding (``class_embed_type="simple_projection"``)."""

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, vocoder) -> None:
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              vocoder=vocoder)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        audio_length_in_s: float | None = None,
        num_inference_steps: int = 10,
        guidance_scale: float = 2.5,
        negative_prompt: str | list[str] | None = None,
        num_waveforms_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        output_type: str = "np",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
    ):
        return self._generate(locals())


class MusicLDMPipeline(MelLatentDiffusionPipeline):
    """Text-to-music with MusicLDM: a full ``ClapModel`` conditions the UNet on its text features and,
    when several waveforms per prompt are asked for and a ``feature_extractor`` is given, ranks them
    by CLAP audio-text similarity (best first)."""

    _optional_components = ["feature_extractor"]

    def __init__(self, vae, text_encoder, tokenizer, feature_extractor, unet, scheduler, vocoder) -> None:
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              feature_extractor=feature_extractor, unet=unet, scheduler=scheduler, vocoder=vocoder)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        audio_length_in_s: float | None = None,
        num_inference_steps: int = 200,
        guidance_scale: float = 2.0,
        negative_prompt: str | list[str] | None = None,
        num_waveforms_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        output_type: str = "np",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
    ):
        return self._generate(locals())
