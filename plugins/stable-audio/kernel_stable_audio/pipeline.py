"""``StableAudioPipeline``: text-to-audio with Stable Audio Open on the kernel engine.

The DiT denoises Oobleck latents of the model's full window (``transformer.config.sample_size``
frames, 47.55 s for the released model); the clip asked for (``audio_start_in_s`` to
``audio_end_in_s``) is cut from the decoded waveform.  Conditioning (Evans et al. 2024, Sec. 3.2):
T5 token states, projected and zeroed on padding, followed by one token each for the start and total
seconds (cross-attention context), and the two seconds tokens side by side as the global token.
The loop, classifier-free guidance and the scheduler are the engine's; this module only supplies the
family hooks.
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
from kernel_audio.clap import negative_texts
from kernel_audio.outputs import AudioPipelineOutput
from kernel_t5.conditioner import t5_encode

from kernel_stable_audio.transformer import stable_audio_rotary_embedding

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("np", "pt", "latent")


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    return float(value)


class StableAudioPipeline(DiffusionPipeline):
    """Stereo waveforms ``(B, audio_channels, samples)`` at ``vae.sampling_rate`` from text prompts."""

    pipeline_family = "stable-audio"
    model_cpu_offload_seq = "text_encoder->projection_model->transformer->vae"
    _callback_tensor_inputs = ["latents", "text_audio_duration_embeds", "negative_text_audio_duration_embeds",
                               "audio_duration_embeds"]

    def __init__(self, vae, text_encoder, projection_model, tokenizer, transformer, scheduler) -> None:
        self.register_modules(vae=vae, text_encoder=text_encoder, projection_model=projection_model,
                              tokenizer=tokenizer, transformer=transformer, scheduler=scheduler)

    @property
    def vae_scale_factor(self) -> int:
        """Waveform samples per latent frame (the VAE's ``hop_length``)."""
        return self.vae.hop_length

    @property
    def rotary_embed_dim(self) -> int:
        return self.transformer.config.attention_head_dim // 2

    @property
    def sampling_rate(self) -> int:
        """Samples per second of the waveforms (the VAE's)."""
        return int(self.vae.config.sampling_rate)

    @property
    def max_audio_length_in_s(self) -> float:
        """The model's window: ``sample_size`` latent frames of ``hop_length`` samples each."""
        return self.transformer.config.sample_size * self.vae.hop_length / self.vae.config.sampling_rate

    # ---------------------------------------------------------------- checks
    def _check_seconds(self, call: SimpleNamespace) -> None:
        start = _seconds("audio_start_in_s", call.audio_start_in_s)
        end = self.max_audio_length_in_s if call.audio_end_in_s is None else _seconds("audio_end_in_s",
                                                                                       call.audio_end_in_s)
        if start >= end:
            raise ValueError(f"audio_end_in_s={end} must be greater than audio_start_in_s={start}")
        if end - start > self.max_audio_length_in_s:
            raise ValueError(f"audio_end_in_s - audio_start_in_s = {end - start} s is longer than this model's maximum "
                             f"of {self.max_audio_length_in_s} s (transformer sample_size x VAE hop_length / "
                             "sampling_rate)")
        low, high = self.projection_model.config.min_value, self.projection_model.config.max_value
        for name, value in (("audio_start_in_s", start), ("audio_end_in_s", end)):
            if not low <= value <= high:
                raise ValueError(f"{name}={value} is outside the seconds this model was conditioned on: "
                                 f"[{low}, {high}] (projection_model min_value / max_value)")
        call.audio_start_in_s, call.audio_end_in_s = start, end
        rate = self.vae.config.sampling_rate
        call.waveform_start, call.waveform_end = int(start * rate), int(end * rate)

    def _check_initial_audio(self, call: SimpleNamespace) -> None:
        audio, rate = call.initial_audio_waveforms, call.initial_audio_sampling_rate
        if audio is None:
            if rate is not None:
                logger.info("initial_audio_sampling_rate is ignored without initial_audio_waveforms")
            return
        if not isinstance(audio, torch.Tensor):
            raise TypeError(f"initial_audio_waveforms must be a torch.Tensor, got {type(audio).__name__}")
        if rate is None:
            raise ValueError("initial_audio_waveforms needs initial_audio_sampling_rate (Hz)")
        if rate != self.vae.config.sampling_rate:
            raise ValueError(f"initial_audio_sampling_rate must be the VAE's {self.vae.config.sampling_rate} Hz, got "
                             f"{rate}; resample the waveforms first")
        if audio.ndim not in (2, 3):
            raise ValueError("initial_audio_waveforms must be (batch, samples) or (batch, channels, samples), got "
                             f"shape {tuple(audio.shape)}")

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
        pairs = (("prompt_embeds", "attention_mask"), ("negative_prompt_embeds", "negative_attention_mask"))
        for name, mask_name in pairs:
            value, mask = getattr(call, name), getattr(call, mask_name)
            if value is not None and (not isinstance(value, torch.Tensor) or value.ndim != 3):
                raise ValueError(f"{name} must be a (batch, tokens, text_encoder_dim) tensor of T5 states")
            if mask is not None and (value is None or tuple(mask.shape) != tuple(value.shape[:2])):
                raise ValueError(f"{mask_name} must come with {name} and have its (batch, tokens) shape")
        self._check_seconds(call)
        self._check_initial_audio(call)

    # ---------------------------------------------------------------- conditioning
    def _text_states(self, call, texts: list[str] | None, embeds, mask) -> torch.Tensor:
        """Projected T5 states with padding tokens zeroed."""
        if embeds is None:
            self.text_encoder.eval()
            out = t5_encode(self.tokenizer, self.text_encoder, texts, self.tokenizer.model_max_length, call.device,
                            use_attention_mask=True)
            embeds, mask = out.embeds, out.mask
        projected = self.projection_model(text_hidden_states=embeds.to(call.device)).text_hidden_states
        if mask is not None:
            projected = projected * mask.to(projected.device).unsqueeze(-1).to(projected.dtype)
        return projected

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        texts = None if call.prompt is None else ([call.prompt] if isinstance(call.prompt, str) else call.prompt)
        text = self._text_states(call, texts, call.prompt_embeds, call.attention_mask)
        batch = text.shape[0]
        seconds = self.projection_model(
            start_seconds=torch.full((batch,), call.audio_start_in_s, device=call.device),
            end_seconds=torch.full((batch,), call.audio_end_in_s, device=call.device))
        start, end = seconds.seconds_start_hidden_states, seconds.seconds_end_hidden_states
        n = call.num_images_per_prompt

        def side(text_states: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"text_audio_duration_embeds": torch.cat([text_states, start, end], dim=1).repeat_interleave(n, 0),
                    "audio_duration_embeds": torch.cat([start, end], dim=2).repeat_interleave(n, 0)}

        cond = Conditioning(side(text))
        if negative:
            if call.negative_prompt is None and call.negative_prompt_embeds is None:
                # No negative prompt: the unconditional context is all zeros, seconds tokens included.
                cond.negative = dict(cond.positive, text_audio_duration_embeds=torch.zeros_like(
                    cond.positive["text_audio_duration_embeds"]))
            else:
                neg_texts = None if call.negative_prompt is None else negative_texts(call.prompt, call.negative_prompt,
                                                                                     batch)
                cond.negative = side(self._text_states(call, neg_texts, call.negative_prompt_embeds,
                                                       call.negative_attention_mask))
        return cond

    # ---------------------------------------------------------------- latents and the denoiser
    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        return (call.batch, self.transformer.config.in_channels, self.transformer.config.sample_size)

    def _text2image(self, call, cond, timesteps):
        latents, blend, hooks = super()._text2image(call, cond, timesteps)
        if call.initial_audio_waveforms is not None:
            latents = latents + self._initial_audio_latents(call).to(latents.dtype)
        return latents, blend, hooks

    def _initial_audio_latents(self, call: SimpleNamespace) -> torch.Tensor:
        """The VAE's latents (a posterior sample) of the initial audio, padded or cut to the model's window."""
        audio = call.initial_audio_waveforms
        if audio.ndim == 2:
            audio = audio.unsqueeze(1)
        channels, prompts = self.vae.config.audio_channels, call.batch // call.num_images_per_prompt
        if audio.shape[1] == 1 and channels == 2:
            audio = audio.repeat(1, 2, 1)
        elif audio.shape[1] == 2 and channels == 1:
            audio = audio.mean(1, keepdim=True)
        if tuple(audio.shape[:2]) != (prompts, channels):
            raise ValueError(f"initial_audio_waveforms must hold one waveform per prompt ({prompts}) with {channels} "
                             f"channel(s) (mono is repeated to stereo), got shape "
                             f"{tuple(call.initial_audio_waveforms.shape)}")
        length = self.transformer.config.sample_size * self.vae.hop_length
        if audio.shape[-1] != length:
            logger.info("initial_audio_waveforms of %d samples is %s to the model's %d", audio.shape[-1],
                        "padded" if audio.shape[-1] < length else "cut", length)
        window = audio.new_zeros(prompts, channels, length)
        window[:, :, :min(audio.shape[-1], length)] = audio[:, :, :length]
        window = window.to(device=call.device, dtype=self.vae.dtype)
        encoded = self.vae.encode(window).latent_dist.sample(call.generator)
        return encoded.repeat_interleave(call.num_images_per_prompt, dim=0)

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        context, global_states = cond["text_audio_duration_embeds"], cond["audio_duration_embeds"]
        rotary = stable_audio_rotary_embedding(self.rotary_embed_dim, model_input.shape[2] + global_states.shape[1],
                                               device=model_input.device)
        timestep = timestep.reshape(-1).expand(model_input.shape[0])
        return self.transformer(model_input, timestep, encoder_hidden_states=context,
                                global_hidden_states=global_states, rotary_embedding=rotary, return_dict=False,
                                **kwargs)[0]

    # ---------------------------------------------------------------- output
    def _decode(self, latents: torch.Tensor, call: SimpleNamespace) -> Any:
        if call.output_type == "latent":
            return latents
        audio = self.vae.decode(latents.to(self.vae.dtype)).sample[:, :, call.waveform_start:call.waveform_end]
        return audio.cpu().float().numpy() if call.output_type == "np" else audio

    def _output(self, audios: Any, call: SimpleNamespace):
        return AudioPipelineOutput(audios=audios) if call.return_dict else (audios,)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        audio_end_in_s: float | None = None,
        audio_start_in_s: float | None = 0.0,
        num_inference_steps: int = 100,
        guidance_scale: float = 7.0,
        negative_prompt: str | list[str] | None = None,
        num_waveforms_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        initial_audio_waveforms: torch.Tensor | None = None,
        initial_audio_sampling_rate: int | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        negative_attention_mask: torch.LongTensor | None = None,
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int | None = 1,
        output_type: str | None = "pt",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' convention
    ):
        return self._generate(locals())
