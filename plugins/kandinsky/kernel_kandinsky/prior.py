"""Kandinsky 2.2's prior: text -> CLIP image embedding, by denoising with a :class:`PriorTransformer`.

The prior runs on the kernel's one loop like an image pipeline whose "latents" are ``(B, embedding_dim)``
embeddings: classifier-free guidance between the prompt and the negative (empty) prompt, an
:class:`UnCLIPScheduler` told each jump (``prev_timestep``, through the engine's per-step scheduler
arguments), and at the end the embeddings are de-normalised with the prior's CLIP statistics.

The negative image embedding the decoder is guided away from is the image encoder's embedding of a
black image, or - when ``negative_prompt`` is given - the prior's own sample for the negative prompt
(the prompts and negative prompts are then run as one batch, as in Diffusers).
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any, Callable

import torch

from kernel.engine import Conditioning
from kernel.pipeline import DiffusionPipeline
from kernel.pipeline_utils import tokenize

from kernel_kandinsky.guidance import unscaled_model_input
from kernel_kandinsky.outputs import KandinskyPriorPipelineOutput


PRIOR_OUTPUT_TYPES = ("pt", "np")


def _prompt_list(value: Any, name: str, optional: bool = False) -> list[str] | None:
    if value is None and optional:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{name} must be a str or a non-empty list of str, got {type(value).__name__}")


def prior_width(prior: Any) -> int | None:
    """The width of the image embeddings a :class:`PriorTransformer` makes (None without a prior)."""
    cfg = getattr(prior, "config", None)
    if cfg is None:
        return None
    return getattr(cfg, "clip_embed_dim", None) or getattr(cfg, "embedding_dim", None)


def check_stage_pair(prior_pipe: Any, decoder_pipe: Any) -> None:
    """A combined pipeline's prior must make embeddings of the width its decoder's UNet takes."""
    made = prior_width(getattr(prior_pipe, "prior", None))
    taken = decoder_pipe._embedding_width() if getattr(decoder_pipe, "unet", None) is not None else None
    if made is not None and taken is not None and made != taken:
        raise ValueError(f"prior_prior makes image embeddings of width {made} but the decoder's unet takes width "
                         f"{taken}; this prior and decoder do not fit (use the prior released with the decoder)")


class KandinskyV22PriorPipeline(DiffusionPipeline):
    """Text (and image) -> CLIP image embeddings for the Kandinsky 2.2 decoder."""

    pipeline_family = "kandinsky"
    model_cpu_offload_seq = "text_encoder->image_encoder->prior"
    _exclude_from_cpu_offload = ["prior"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "text_encoder_hidden_states", "text_mask"]

    def __init__(self, prior, image_encoder, text_encoder, tokenizer, scheduler, image_processor) -> None:
        width, encoded = prior_width(prior), getattr(getattr(image_encoder, "config", None), "projection_dim", None)
        if width is not None and encoded is not None and width != encoded:
            raise ValueError(f"image_encoder gives image embeddings of width {encoded} (config.projection_dim) but the "
                             f"prior makes embeddings of width {width}; use the image encoder released with this prior")
        self.register_modules(prior=prior, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                              image_encoder=image_encoder, image_processor=image_processor)

    # ---------------------------------------------------------------- public helpers (Diffusers' names)
    def get_zero_embed(self, batch_size: int = 1, device=None) -> torch.Tensor:
        """The image encoder's embedding of a black image, ``batch_size`` times (the default negative)."""
        device = device or self.device
        size = self.image_encoder.config.image_size
        black = torch.zeros(1, 3, size, size, device=device, dtype=self.image_encoder.dtype)
        return self.image_encoder(black)["image_embeds"].repeat(batch_size, 1)

    def encode_images(self, pixels: torch.Tensor, device=None) -> torch.Tensor:
        """The image encoder's CLIP image embeddings ``(B, D)`` of preprocessed ``(B, 3, S, S)`` pixels."""
        device = device or self.device
        return self.image_encoder(pixels.to(device=device, dtype=self.image_encoder.dtype))["image_embeds"]

    def _text_prior(self) -> "KandinskyV22PriorPipeline":
        """The pipeline that samples an embedding from a prompt alone (``interpolate``'s prompts): this one."""
        return self

    def _encode_text(self, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(text_embeds, last_hidden_state, mask)`` of ``prompts``, padded to the tokenizer's length."""
        inputs = tokenize(self.tokenizer, prompts)
        out = self.text_encoder(inputs.input_ids.to(device))
        return out.text_embeds, out.last_hidden_state, inputs.attention_mask.bool().to(device)

    def encode_prompt(self, prompt, device, num_images_per_prompt: int, do_classifier_free_guidance: bool,
                      negative_prompt=None):
        """``(prompt_embeds, text_encoder_hidden_states, text_mask)``, ``[negative; positive]`` rows with guidance."""
        cond = self._encode_conditioning(_prompt_list(prompt, "prompt"), _prompt_list(negative_prompt, "negative_prompt",
                                                                                      optional=True),
                                         device, num_images_per_prompt, do_classifier_free_guidance)
        names = ("prompt_embeds", "text_encoder_hidden_states", "text_mask")
        if cond.negative is None:
            return tuple(cond.positive[n] for n in names)
        return tuple(torch.cat([cond.negative[n], cond.positive[n]]) for n in names)

    def _encode_conditioning(self, prompts: list[str], negatives: list[str] | None, device, n: int,
                             negative: bool) -> Conditioning:
        def side(texts: list[str]) -> dict[str, torch.Tensor]:
            embeds, hidden, mask = self._encode_text(texts, device)
            return {"prompt_embeds": embeds.repeat_interleave(n, dim=0),
                    "text_encoder_hidden_states": hidden.repeat_interleave(n, dim=0),
                    "text_mask": mask.repeat_interleave(n, dim=0)}

        positive = side(prompts)
        if not negative:
            return Conditioning(positive)
        if negatives is not None and len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}; "
                             "give one negative prompt per prompt")
        return Conditioning(positive, side(negatives if negatives is not None else [""] * len(prompts)))

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        prompts = _prompt_list(call.prompt, "prompt")
        negatives = _prompt_list(call.negative_prompt, "negative_prompt", optional=True)
        if call.output_type not in PRIOR_OUTPUT_TYPES:
            raise ValueError(f"output_type={call.output_type!r} is not supported by the prior; use one of "
                             f"{list(PRIOR_OUTPUT_TYPES)}")
        call.split_negative = negatives is not None
        if negatives is not None:
            if len(negatives) != len(prompts):
                raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}; "
                                 "give one negative prompt per prompt")
            # The negative prompts' own image embeddings are sampled in the same batch (guided away from
            # themselves, so unguided), and split off at the end.
            prompts, negatives = prompts + negatives, negatives + negatives
        call.prompt, call.negative_prompt, call.prompt_embeds = prompts, negatives, None
        call.tells_jump = "prev_timestep" in inspect.signature(self.scheduler.step).parameters

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        return self._encode_conditioning(call.prompt, call.negative_prompt, call.device, call.num_images_per_prompt,
                                         negative)

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        return (call.batch, self.prior.config.embedding_dim)

    def _given_latents(self, call: SimpleNamespace, shape: tuple[int, ...]) -> torch.Tensor:
        if tuple(call.latents.shape) != tuple(shape):
            raise ValueError(f"latents must have shape {tuple(shape)} (prompts x num_images_per_prompt, doubled with a "
                             f"negative_prompt, x embedding_dim) for this call, got {tuple(call.latents.shape)}")
        return call.latents.to(device=call.device, dtype=call.dtype)

    _scale_model_input = unscaled_model_input

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        return self.prior(model_input, timestep=timestep, proj_embedding=cond["prompt_embeds"],
                          encoder_hidden_states=cond["text_encoder_hidden_states"], attention_mask=cond["text_mask"],
                          **kwargs).predicted_image_embedding

    def _step_kwargs(self, index: int, timesteps: torch.Tensor) -> dict[str, Any]:
        # unCLIP's scheduler is told each jump; a scheduler without prev_timestep keeps its own schedule.
        if not self._call.tells_jump:
            return {}
        return {"prev_timestep": timesteps[index + 1] if index + 1 < len(timesteps) else None}

    def _decode(self, latents: torch.Tensor, call: SimpleNamespace):
        embeds = self.prior.post_process_latents(latents)
        if call.split_negative:
            embeds, negative = embeds.chunk(2)
        else:
            negative = self.get_zero_embed(embeds.shape[0], device=embeds.device)
        if call.output_type == "np":
            return embeds.cpu().numpy(), negative.cpu().numpy()
        return embeds, negative

    def _output(self, images, call: SimpleNamespace):
        embeds, negative = images
        if not call.return_dict:
            return embeds, negative
        return KandinskyPriorPipelineOutput(image_embeds=embeds, negative_image_embeds=negative)

    # ---------------------------------------------------------------- calls
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        guidance_scale: float = 4.0,
        output_type: str | None = "pt",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
    ):
        return self._generate(locals())

    @torch.no_grad()
    def interpolate(self, images_and_prompts: list, weights: list[float], num_images_per_prompt: int = 1,
                    num_inference_steps: int = 25, generator=None, latents: torch.Tensor | None = None,
                    negative_prior_prompt: str | None = None, negative_prompt: str = "", guidance_scale: float = 4.0,
                    device=None) -> KandinskyPriorPipelineOutput:
        """A weighted sum of the image embeddings of prompts (sampled with the prior) and images (encoded)."""
        import PIL.Image

        device = device or self.device
        if len(images_and_prompts) != len(weights):
            raise ValueError(f"images_and_prompts has {len(images_and_prompts)} items but weights has {len(weights)}; "
                             "give one weight per item")
        run = dict(num_inference_steps=num_inference_steps, num_images_per_prompt=num_images_per_prompt,
                   generator=generator, latents=latents, negative_prompt=negative_prior_prompt,
                   guidance_scale=guidance_scale)
        sample = self._text_prior()
        total = 0
        for item, weight in zip(images_and_prompts, weights):
            if isinstance(item, str):
                embeds = sample(item, **run).image_embeds
            elif isinstance(item, (PIL.Image.Image, torch.Tensor)):
                if isinstance(item, PIL.Image.Image):
                    item = self.image_processor(item, return_tensors="pt").pixel_values[:1]
                embeds = self.encode_images(item, device).repeat(num_images_per_prompt, 1)
            else:
                raise ValueError(f"images_and_prompts items must be str, PIL.Image.Image or torch.Tensor, "
                                 f"got {type(item).__name__}")
            total = total + embeds * weight
        zero = sample(negative_prompt, **run)
        negative = zero.negative_image_embeds if negative_prompt == "" else zero.image_embeds
        return KandinskyPriorPipelineOutput(image_embeds=total, negative_image_embeds=negative)
