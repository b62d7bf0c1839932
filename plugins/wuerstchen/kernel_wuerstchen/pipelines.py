"""Würstchen v2's three pipelines: the prior (text -> image embedding), the decoder (embedding -> image) and both
in one call.  They are Stable Cascade's stage pipelines with Würstchen's text conditioning and denoisers:

* text: the CLIP text encoder's final (layer-normed) token states, with the attention mask; no pooled embedding;
* prior: :class:`WuerstchenPrior` on the token states; the sampled embedding is mapped to
  ``latents * latent_mean - latent_std`` (Diffusers' formula, kept so checkpoints decode as they were trained);
* decoder: :class:`WuerstchenDiffNeXt` on the embedding (``effnet``, zeros on the negative side) and the token
  states, then stage A (``PaellaVQModel``).

Both stages run the kernel's one loop through Stable Cascade's classes (schedule of ``n + 1`` ratios, latents,
guidance, callbacks); this module supplies only the hooks that differ.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch

from kernel.engine import Conditioning
from kernel.outputs import BaseOutput
from kernel.pipeline_utils import batch_size_of, tokenize
from kernel_stable_cascade.pipeline_combined import StableCascadeCombinedPipeline
from kernel_stable_cascade.pipeline_common import check_prompt_sources, prompt_list
from kernel_stable_cascade.pipeline_decoder import StableCascadeDecoderPipeline
from kernel_stable_cascade.pipeline_prior import StableCascadePriorPipeline
from kernel_wuerstchen.lora import WuerstchenPriorLoraLoaderMixin


#: Diffusers' default prior schedule for the released 1024px model (20 steps down to 2/3, then 10 to 0).
DEFAULT_STAGE_C_TIMESTEPS = [float(t) for t in np.linspace(1.0, 2 / 3, 20)] + \
    [float(t) for t in np.linspace(2 / 3, 0.0, 11)[1:]]

_TEXT_STATES = "text_encoder_hidden_states"  # Diffusers' callback name for the token states


@dataclass
class WuerstchenPriorPipelineOutput(BaseOutput):
    """``image_embeddings``: ``(B, c_in, ceil(height / resolution_multiple), ceil(width / ...))``, a tensor or an
    array for ``output_type="np"``."""

    image_embeddings: Any = None


class _WuerstchenEntries:
    """Writes Würstchen's models as ``["stable_cascade", "WuerstchenPrior"]`` (``WuerstchenDiffNeXt``) in
    ``model_index.json``, as Stable Cascade's pipelines write stage A: Diffusers 0.42.1 resolves neither the
    ``["diffusers", ...]`` entries its own ``save_pretrained`` writes nor the Hub's ``["wuerstchen", ...]`` (the
    classes moved to its deprecated package), but with a pipeline-package library it accepts the models passed to
    ``from_pretrained``.  All three spellings load here (the registry resolves the class name)."""

    _model_entries = ("WuerstchenPrior", "WuerstchenDiffNeXt")

    def _fix_stage_a_entries(self) -> None:
        super()._fix_stage_a_entries()
        for name in self.__dict__.get("_component_keys", ()):
            class_name = type(self.__dict__.get(name)).__name__
            if class_name in self._model_entries:
                self.register_to_config(**{name: [self._stage_a_entry[0], class_name]})


def _legacy_callback(call: SimpleNamespace, owner: str) -> None:
    """Diffusers' deprecated ``callback(step, timestep, latents)`` / ``callback_steps`` keywords (still accepted by
    the Würstchen pipelines in 0.42.1, with a FutureWarning) from ``call.kwargs`` onto ``call`` for the engine."""
    extra = dict(getattr(call, "kwargs", None) or {})
    call.callback = extra.pop("callback", None)
    steps = extra.pop("callback_steps", None)
    if extra:
        raise TypeError(f"{owner}.__call__ got unexpected keyword arguments {sorted(extra)} (of the deprecated ones "
                        "it takes callback and callback_steps)")
    for name, value in (("callback", call.callback), ("callback_steps", steps)):
        if value is not None:
            warnings.warn(f"{name} is deprecated (Diffusers removes it in 1.0.0); use callback_on_step_end",
                          FutureWarning, stacklevel=4)
    if call.callback is not None and not callable(call.callback):
        raise TypeError(f"callback must be callable as callback(step, timestep, latents), got "
                        f"{type(call.callback).__name__}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"callback_steps must be a positive int (call callback every that many steps), got {steps!r}")
    call.callback_steps = 1 if steps is None else steps


class _WuerstchenText(_WuerstchenEntries):
    """Würstchen's text conditioning, shared by the prior and the decoder."""

    def _encode_texts(self, prompts: list[str], device) -> torch.Tensor:
        """The final token states ``(B, L, C)`` of ``prompts`` padded to the tokenizer's length (mask passed)."""
        inputs = tokenize(self.tokenizer, prompts)
        out = self.text_encoder(inputs.input_ids.to(device), attention_mask=inputs.attention_mask.to(device))
        return out.last_hidden_state

    def _text_sides(self, call: SimpleNamespace, negative: bool, repeats: int, prompt_embeds=None,
                    negative_prompt_embeds=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(positive, negative or None)`` token states, each row repeated ``repeats`` times; the negative side
        (``negative_prompt``, else ``""`` per prompt) only when ``negative``."""
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self._denoiser_module().dtype
        prompts = batch_size_of(call.prompt, prompt_embeds)

        def rows(states):
            return states.to(device=call.device, dtype=dtype).repeat_interleave(repeats, dim=0)

        positive = prompt_embeds if prompt_embeds is not None else \
            self._encode_texts(prompt_list(call.prompt, "prompt"), call.device)
        if not negative:
            return rows(positive), None
        if negative_prompt_embeds is None:
            texts = [""] * prompts if call.negative_prompt is None else prompt_list(call.negative_prompt,
                                                                                    "negative_prompt")
            if len(texts) == 1 and prompts > 1:
                texts = texts * prompts
            negative_prompt_embeds = self._encode_texts(texts, call.device)
        return rows(positive), rows(negative_prompt_embeds)

    def _check_embeds(self, name: str, value: Any, width: int) -> None:
        if value is None:
            return
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.ndim != 3 or value.shape[-1] != width:
            raise ValueError(f"{name} must be (batch, tokens, {width}) text encoder states ({width}: the "
                             f"denoiser's text width), got {tuple(value.shape)}")


def _check_negative_prompts(call: SimpleNamespace, prompts: int) -> None:
    if call.negative_prompt is not None:
        negatives = prompt_list(call.negative_prompt, "negative_prompt")
        if len(negatives) not in (1, prompts):
            raise ValueError(f"negative_prompt has {len(negatives)} entries but there are {prompts} prompts; give "
                             "one negative prompt, or one per prompt")


class WuerstchenPriorPipeline(WuerstchenPriorLoraLoaderMixin, _WuerstchenText, StableCascadePriorPipeline):
    """Stage C: text -> image embeddings for :class:`WuerstchenDecoderPipeline` (Diffusers' arguments and defaults);
    LoRA in the prior and the text encoder through :class:`kernel_wuerstchen.lora.WuerstchenPriorLoraLoaderMixin`."""

    pipeline_family = "wuerstchen"
    unet_name = "prior"
    text_encoder_name = "text_encoder"
    model_cpu_offload_seq = "text_encoder->prior"
    _optional_components: list[str] = []
    # "prompt_embeds" is the engine's name for the token states; Diffusers' alias for them is accepted too.
    _callback_tensor_inputs = ["latents", _TEXT_STATES, "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, tokenizer, text_encoder, prior, scheduler, latent_mean: float = 42.0, latent_std: float = 1.0,
                 resolution_multiple: float = 42.67) -> None:
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, prior=prior, scheduler=scheduler)
        self.register_to_config(latent_mean=latent_mean, latent_std=latent_std,
                                resolution_multiple=resolution_multiple)

    def _denoiser_module(self):
        return self.prior

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        _legacy_callback(call, type(self).__name__)
        check_prompt_sources(call)
        width = self.prior.config.c_cond
        self._check_embeds("prompt_embeds", call.prompt_embeds, width)
        self._check_embeds("negative_prompt_embeds", call.negative_prompt_embeds, width)
        if call.prompt_embeds is not None and call.negative_prompt_embeds is not None and \
                call.prompt_embeds.shape != call.negative_prompt_embeds.shape:
            raise ValueError(f"prompt_embeds {tuple(call.prompt_embeds.shape)} and negative_prompt_embeds "
                             f"{tuple(call.negative_prompt_embeds.shape)} must have the same shape")
        _check_negative_prompts(call, batch_size_of(call.prompt, call.prompt_embeds))
        if call.output_type not in ("pt", "np"):
            raise ValueError(f"output_type={call.output_type!r} is not supported by the prior; use one of ['pt', 'np']")
        for name in ("height", "width"):
            value = getattr(call, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int (pixels of the final image), got {value!r}")

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        pos, neg = self._text_sides(call, negative, call.num_images_per_prompt, call.prompt_embeds,
                                    call.negative_prompt_embeds)
        call.cond = Conditioning({"prompt_embeds": pos}, None if neg is None else {"prompt_embeds": neg})
        return call.cond

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        r = self.config.resolution_multiple
        return (call.batch, self.prior.config.c_in, math.ceil(call.height / r), math.ceil(call.width / r))

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        return self.prior(model_input, r=self._ratio(timestep, model_input), c=cond["prompt_embeds"], **kwargs)

    def _decode(self, latents: torch.Tensor, call: SimpleNamespace):
        return latents * self.config.latent_mean - self.config.latent_std

    def _output(self, embeddings, call: SimpleNamespace):
        if call.output_type == "np":
            embeddings = embeddings.cpu().float().numpy()
        if not call.return_dict:
            return (embeddings,)
        return WuerstchenPriorPipelineOutput(image_embeddings=embeddings)

    # ---------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int = 1024,
        width: int = 1024,
        num_inference_steps: int = 60,
        timesteps: list[float] | None = None,
        guidance_scale: float = 8.0,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        num_images_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pt",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        **kwargs: Any,
    ):
        """``kwargs``: Diffusers' deprecated ``callback(step, timestep, latents)`` and ``callback_steps``."""
        return self._generate(locals())


class WuerstchenDecoderPipeline(_WuerstchenText, StableCascadeDecoderPipeline):
    """Stage B + A: image embeddings (+ text) -> images (Diffusers' arguments and defaults)."""

    pipeline_family = "wuerstchen"
    model_cpu_offload_seq = "text_encoder->decoder->vqgan"
    # "prompt_embeds" is the engine's name for the token states; Diffusers' alias for them is accepted too.
    _callback_tensor_inputs = ["latents", _TEXT_STATES, "prompt_embeds", "negative_prompt_embeds", "image_embeddings"]

    def _callback_view(self, name, latents, cond):
        return super()._callback_view("prompt_embeds" if name == _TEXT_STATES else name, latents, cond)

    def _step_callback(self, callback, names, i, t, latents, cond):
        def renamed(pipe, step, timestep, tensors):
            out = callback(pipe, step, timestep, tensors)
            if isinstance(out, dict) and _TEXT_STATES in out:
                out = {("prompt_embeds" if k == _TEXT_STATES else k): v for k, v in out.items()}
            return out

        return super()._step_callback(renamed, names, i, t, latents, cond)

    def __init__(self, tokenizer, text_encoder, decoder, scheduler, vqgan, latent_dim_scale: float = 10.67) -> None:
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, decoder=decoder, scheduler=scheduler,
                              vqgan=vqgan)
        self.register_to_config(latent_dim_scale=latent_dim_scale)

    def _denoiser_module(self):
        return self.decoder

    def _embedding_channels(self) -> int:
        """``effnet_embd``; a decoder that injects the embedding at no level never reads it, and (as in Diffusers)
        takes embeddings of any width - only their grid sets the latent size."""
        config = self.decoder.config
        embeds = getattr(getattr(self, "_call", None), "image_embeddings", None)
        if not any(config.inject_effnet) and isinstance(embeds, torch.Tensor) and embeds.ndim == 4:
            return embeds.shape[1]
        return config.effnet_embd

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        _legacy_callback(call, type(self).__name__)
        if call.prompt is None:
            raise ValueError("prompt is required (a str or a list of str; the combined pipeline passes \"\")")
        embeds = call.image_embeddings
        if isinstance(embeds, (list, tuple)) and embeds and all(isinstance(e, torch.Tensor) for e in embeds):
            embeds = torch.cat(list(embeds), dim=0)
        channels = self._embedding_channels()
        if isinstance(embeds, torch.Tensor) and (embeds.ndim != 4 or embeds.shape[1] != channels):
            raise ValueError(f"image_embeddings must be (batch, {channels}, height, width) image embeddings from the "
                             f"prior ({channels} channels: the decoder's effnet_embd), got {tuple(embeds.shape)}")
        # Stable Cascade's checks read the pooled / embedding arguments Würstchen's decoder does not take.
        for name in ("prompt_embeds", "prompt_embeds_pooled", "negative_prompt_embeds",
                     "negative_prompt_embeds_pooled"):
            setattr(call, name, None)
        super()._prepare(call)
        grid = self.decoder.config.patch_size * 2 ** (len(self.decoder.config.c_hidden) - 1)
        scale = self.config.latent_dim_scale
        h, w = (int(n * scale) for n in call.image_embeddings.shape[-2:])
        if h % grid or w % grid:
            raise ValueError(f"image_embeddings of {tuple(call.image_embeddings.shape[-2:])} give a {h} x {w} latent "
                             f"grid (x latent_dim_scale {self.config.latent_dim_scale}), which the decoder's "
                             f"{len(self.decoder.config.c_hidden)} levels with patch_size "
                             f"{self.decoder.config.patch_size} cannot take: it must be divisible by {grid}")

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        embeds = call.image_embeddings.to(device=call.device, dtype=self.decoder.dtype)
        pos, neg = self._text_sides(call, negative, call.text_repeats)
        # the embeddings first: their dtype (the decoder's) is the latents' dtype
        positive = {"image_embeddings": embeds, "prompt_embeds": pos}
        negative_side = None if neg is None else {"image_embeddings": torch.zeros_like(embeds), "prompt_embeds": neg}
        return Conditioning(positive, negative_side)

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        return self.decoder(model_input, r=self._ratio(timestep, model_input), effnet=cond["image_embeddings"],
                            clip=cond["prompt_embeds"], **kwargs)

    # ---------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        image_embeddings: torch.Tensor | list[torch.Tensor],
        prompt: str | list[str] = None,
        num_inference_steps: int = 12,
        timesteps: list[float] | None = None,
        guidance_scale: float = 0.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        **kwargs: Any,
    ):
        """``kwargs``: Diffusers' deprecated ``callback(step, timestep, latents)`` and ``callback_steps``."""
        return self._generate(locals())


class WuerstchenCombinedPipeline(_WuerstchenEntries, StableCascadeCombinedPipeline):
    """Text in, image out: :class:`WuerstchenPriorPipeline` then :class:`WuerstchenDecoderPipeline` over the nine
    components of both (the prior's prefixed ``prior_``, as in Diffusers' folders).  ``latents`` go to the prior."""

    pipeline_family = "wuerstchen"
    model_cpu_offload_seq = "prior_text_encoder->prior_prior->text_encoder->decoder->vqgan"
    _optional_components: list[str] = []
    _prior_class = WuerstchenPriorPipeline
    _decoder_class = WuerstchenDecoderPipeline

    def __init__(self, tokenizer, text_encoder, decoder, scheduler, vqgan, prior_tokenizer, prior_text_encoder,
                 prior_prior, prior_scheduler) -> None:
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer, decoder=decoder, scheduler=scheduler,
                              vqgan=vqgan, prior_prior=prior_prior, prior_text_encoder=prior_text_encoder,
                              prior_tokenizer=prior_tokenizer, prior_scheduler=prior_scheduler)
        self.prior_pipe = self._prior_class(prior=prior_prior, text_encoder=prior_text_encoder,
                                            tokenizer=prior_tokenizer, scheduler=prior_scheduler)
        self.decoder_pipe = self._decoder_class(text_encoder=text_encoder, tokenizer=tokenizer, decoder=decoder,
                                                scheduler=scheduler, vqgan=vqgan)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int = 512,
        width: int = 512,
        prior_num_inference_steps: int = 60,
        prior_timesteps: list[float] | None = None,
        prior_guidance_scale: float = 4.0,
        num_inference_steps: int = 12,
        decoder_timesteps: list[float] | None = None,
        decoder_guidance_scale: float = 0.0,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        prior_callback_on_step_end: Callable | None = None,
        prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
        **kwargs: Any,
    ):
        """``kwargs``: Diffusers' deprecated ``prior_callback`` / ``prior_callback_steps`` (for the prior) and
        ``callback`` / ``callback_steps`` (for the decoder), each ``callback(step, timestep, latents)``."""
        prior_kwargs = {}
        for name in ("callback", "callback_steps"):
            if kwargs.get(f"prior_{name}") is not None:
                prior_kwargs[name] = kwargs.pop(f"prior_{name}")
            else:
                kwargs.pop(f"prior_{name}", None)
        unknown = sorted(set(kwargs) - {"callback", "callback_steps"})
        if unknown:
            raise TypeError(f"{type(self).__name__}.__call__ got unexpected keyword arguments {unknown} (of the "
                            "deprecated ones it takes prior_callback, prior_callback_steps, callback, callback_steps)")
        embeddings = self.prior_pipe(
            prompt=prompt if prompt_embeds is None else None, height=height, width=width,
            num_inference_steps=prior_num_inference_steps, timesteps=prior_timesteps,
            guidance_scale=prior_guidance_scale,
            negative_prompt=negative_prompt if negative_prompt_embeds is None else None, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, num_images_per_prompt=num_images_per_prompt,
            generator=generator, latents=latents, output_type="pt", return_dict=False,
            callback_on_step_end=prior_callback_on_step_end,
            callback_on_step_end_tensor_inputs=prior_callback_on_step_end_tensor_inputs, **prior_kwargs)[0]
        outputs = self.decoder_pipe(
            image_embeddings=embeddings, prompt=prompt if prompt is not None else "",
            num_inference_steps=num_inference_steps, timesteps=decoder_timesteps,
            guidance_scale=decoder_guidance_scale, negative_prompt=negative_prompt, generator=generator,
            output_type=output_type, return_dict=return_dict, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, **kwargs)
        self.maybe_free_model_hooks()
        return outputs
