"""AudioLDM 2 text-to-audio (Liu et al. 2023, arXiv:2308.05734) on the kernel engine.

The prompt goes through two text encoders: CLAP (one unit-norm vector) and T5 / Flan-T5 (a sequence
of states).  :class:`~kernel_audio.unet_audioldm2.AudioLDM2ProjectionModel` brings both to GPT-2's
width and frames them; GPT-2 then continues that sequence for ``max_new_tokens`` steps, feeding each
new last hidden state back as the next input.  The UNet attends to those generated states and to the
T5 states (with their mask).  Mel geometry, decoding and CLAP ranking are shared with AudioLDM /
MusicLDM (:mod:`kernel_audio.ldm`); the loop, guidance and callbacks are the engine's.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import torch

from kernel.engine import Conditioning
from kernel.pipeline_utils import check_output_type, check_prompts

from kernel_audio.clap import clap_text_embeds, negative_texts
from kernel_audio.ldm import OUTPUT_TYPES, MelLatentDiffusionPipeline, _positive_int


DEFAULT_NEW_TOKENS = 8


def _check_states(name: str, value: Any, ndim: int, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, torch.Tensor) or value.ndim != ndim:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a {what} tensor, got {got}")


def _check_embeddings(call: SimpleNamespace) -> None:
    """The precomputed T5 / GPT-2 states and masks: given together, of the right ranks and shapes."""
    if call.prompt is None and (call.prompt_embeds is None or call.generated_prompt_embeds is None):
        raise ValueError("pass prompt, or both prompt_embeds (T5 states) and generated_prompt_embeds (GPT-2 "
                         "states)")
    if call.negative_prompt_embeds is not None and call.negative_generated_prompt_embeds is None:
        raise ValueError("negative_prompt_embeds needs negative_generated_prompt_embeds as well")
    if call.prompt is not None and call.generated_prompt_embeds is not None:
        raise ValueError("pass either prompt or generated_prompt_embeds, not both")
    if call.negative_prompt is not None and call.negative_generated_prompt_embeds is not None:
        raise ValueError("pass either negative_prompt or negative_generated_prompt_embeds, not both")
    for name in ("prompt_embeds", "negative_prompt_embeds"):
        _check_states(name, getattr(call, name), 3, "(batch, tokens, T5 width)")
    for name in ("generated_prompt_embeds", "negative_generated_prompt_embeds"):
        _check_states(name, getattr(call, name), 3, "(batch, new tokens, GPT-2 width)")
    pairs = (("attention_mask", "prompt_embeds"), ("negative_attention_mask", "negative_prompt_embeds"))
    for mask, states in pairs:
        m, s = getattr(call, mask), getattr(call, states)
        if m is not None and (s is None or not isinstance(m, torch.Tensor) or tuple(m.shape) != tuple(s.shape[:2])):
            raise ValueError(f"{mask} must be a (batch, tokens) tensor matching {states}"
                             + ("" if s is not None else f", and is only read with {states}"))
    pos, neg = call.prompt_embeds, call.negative_prompt_embeds
    if pos is not None and neg is not None and pos.shape != neg.shape:
        raise ValueError(f"prompt_embeds {tuple(pos.shape)} and negative_prompt_embeds {tuple(neg.shape)} must "
                         "have the same shape (pad the T5 states to the same length)")
    gen, neg_gen = call.generated_prompt_embeds, call.negative_generated_prompt_embeds
    if gen is not None and neg_gen is not None and gen.shape != neg_gen.shape:
        raise ValueError(f"generated_prompt_embeds {tuple(gen.shape)} and negative_generated_prompt_embeds "
                         f"{tuple(neg_gen.shape)} must have the same shape")


class AudioLDM2Pipeline(MelLatentDiffusionPipeline):
    """Text-to-audio with AudioLDM 2: a ``ClapModel`` and a ``T5EncoderModel`` encode the prompt, an
    :class:`AudioLDM2ProjectionModel` and a GPT-2 (``GPT2Model``) turn them into the UNet's first
    context, the T5 states are its second; the waveforms of several per prompt are ranked by CLAP."""

    pipeline_family = "audioldm2"
    model_cpu_offload_seq = "text_encoder->text_encoder_2->projection_model->language_model->unet->vae->vocoder"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "generated_prompt_embeds",
                               "negative_generated_prompt_embeds", "attention_mask", "negative_attention_mask"]
    _optional_components = ["feature_extractor"]

    def __init__(self, vae, text_encoder, text_encoder_2, projection_model, language_model, tokenizer, tokenizer_2,
                 feature_extractor, unet, scheduler, vocoder) -> None:
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                              projection_model=projection_model, language_model=language_model, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, feature_extractor=feature_extractor, unet=unet,
                              scheduler=scheduler, vocoder=vocoder)

    # ---------------------------------------------------------------- checks
    def _prepare(self, call: SimpleNamespace) -> None:
        if getattr(getattr(self.text_encoder_2, "config", None), "model_type", None) == "vits":
            raise ValueError("text_encoder_2 is a VITS model (AudioLDM 2 text-to-speech), which is not supported "
                             "here; use a T5EncoderModel")
        if call.transcription is not None:
            raise ValueError("transcription is only read by the text-to-speech checkpoints (a VITS text_encoder_2), "
                             "which are not supported here; leave it None")
        _check_embeddings(call)
        n = call.max_new_tokens
        if n is None:
            n = getattr(self.language_model.config, "max_new_tokens", None) or DEFAULT_NEW_TOKENS
        if not _positive_int(n):
            raise ValueError(f"max_new_tokens must be a positive int (GPT-2 steps), got {n!r}")
        call.max_new_tokens = int(n)
        n = call.num_waveforms_per_prompt
        if not _positive_int(n):
            raise ValueError(f"num_waveforms_per_prompt must be a positive int (waveforms per prompt), got {n!r}")
        call.num_images_per_prompt = int(n)  # the engine's name for the per-prompt count
        check_output_type(call.output_type, OUTPUT_TYPES)
        if not _positive_int(call.callback_steps):
            raise ValueError(f"callback_steps must be a positive int, got {call.callback_steps!r}")
        check_prompts({"prompt": call.prompt}, call.prompt_embeds, {"negative_prompt": call.negative_prompt},
                      call.negative_prompt_embeds)
        self._audio_length(call)

    # ---------------------------------------------------------------- text
    def generate_language_model(self, inputs_embeds: torch.Tensor, max_new_tokens: int = DEFAULT_NEW_TOKENS,
                                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Continue ``inputs_embeds`` ``(B, S, D)`` with GPT-2 for ``max_new_tokens`` steps (each step appends
        the last position's final hidden state); returns the ``(B, max_new_tokens, D)`` new states."""
        embeds = inputs_embeds
        mask = attention_mask
        for _ in range(max_new_tokens):
            out = self.language_model(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True,
                                      use_cache=False, return_dict=True)
            embeds = torch.cat([embeds, out.hidden_states[-1][:, -1:]], dim=1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        return embeds[:, -max_new_tokens:]

    def _t5_states(self, texts: list[str], device, max_length: int | None = None):
        tok = self.tokenizer_2
        if max_length is None:
            inputs = tok(texts, padding=True, max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        else:
            inputs = tok(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        ids, mask = inputs.input_ids.to(device), inputs.attention_mask.to(device)
        return self.text_encoder_2(ids, attention_mask=mask)[0], mask

    def _encode_texts(self, texts: list[str], call: SimpleNamespace, max_length: int | None = None):
        """``(T5 states, T5 mask, GPT-2 states)`` for ``texts``."""
        clap = clap_text_embeds(self.tokenizer, self.text_encoder, texts, call.device)[:, None, :]
        states, mask = self._t5_states(texts, call.device, max_length)
        projected = self.projection_model(hidden_states=clap, hidden_states_1=states,
                                          attention_mask=mask.new_ones((len(texts), 1)), attention_mask_1=mask)
        generated = self.generate_language_model(projected.hidden_states, call.max_new_tokens,
                                                 attention_mask=projected.attention_mask)
        return states, mask, generated

    def _side(self, states, mask, generated, call) -> dict[str, torch.Tensor]:
        n = call.num_images_per_prompt
        states = states.to(dtype=self.text_encoder_2.dtype, device=call.device)
        mask = torch.ones(states.shape[:2], dtype=torch.long, device=call.device) if mask is None \
            else mask.to(call.device)
        generated = generated.to(dtype=self.language_model.dtype, device=call.device)
        return {"prompt_embeds": states.repeat_interleave(n, dim=0),
                "attention_mask": mask.repeat_interleave(n, dim=0),
                "generated_prompt_embeds": generated.repeat_interleave(n, dim=0)}

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        if call.prompt_embeds is None:
            texts = [call.prompt] if isinstance(call.prompt, str) else call.prompt
            states, mask, generated = self._encode_texts(texts, call)
        else:
            states, mask, generated = call.prompt_embeds, call.attention_mask, call.generated_prompt_embeds
        cond = Conditioning(self._side(states, mask, generated, call))
        if negative:
            if call.negative_prompt_embeds is not None:
                neg = (call.negative_prompt_embeds, call.negative_attention_mask, call.negative_generated_prompt_embeds)
            elif call.negative_generated_prompt_embeds is not None:
                raise ValueError("negative_generated_prompt_embeds needs negative_prompt_embeds (the T5 states) too")
            else:
                texts = negative_texts(call.prompt, call.negative_prompt, states.shape[0])
                neg = self._encode_texts(texts, call, max_length=states.shape[1])
            cond.negative = self._side(*neg, call)
        return cond

    # ---------------------------------------------------------------- denoiser and ranking
    def _evaluate(self, model_input, timestep, cond, **kwargs):
        return self.unet(model_input, timestep, encoder_hidden_states=cond["generated_prompt_embeds"],
                         encoder_hidden_states_1=cond["prompt_embeds"], encoder_attention_mask_1=cond["attention_mask"],
                         cross_attention_kwargs=self._call.cross_attention_kwargs, return_dict=False, **kwargs)[0]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        transcription: str | list[str] | None = None,
        audio_length_in_s: float | None = None,
        num_inference_steps: int = 200,
        guidance_scale: float = 3.5,
        negative_prompt: str | list[str] | None = None,
        num_waveforms_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        generated_prompt_embeds: torch.Tensor | None = None,
        negative_generated_prompt_embeds: torch.Tensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        negative_attention_mask: torch.LongTensor | None = None,
        max_new_tokens: int | None = None,
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        output_type: str = "np",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
    ):
        return self._generate(locals())
