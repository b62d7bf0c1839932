"""Stable Cascade stage C: text (and images) -> the 16-channel image embedding stage B decodes.

The "latents" are the embedding grid ``(B, 16, ceil(height / r), ceil(width / r))`` with
``r = resolution_multiple`` (42.67: a 1024 x 1024 image has a 24 x 24 embedding).  The prior UNet reads the CLIP
token states, the pooled text embedding and CLIP image embeddings (zeros without ``images`` / ``image_embeds``;
zeros on the negative side always), Würstchen v3, Pernias et al. 2023, arXiv:2306.00637.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import torch

from kernel.engine import Conditioning
from kernel.outputs import BaseOutput
from kernel.pipeline_utils import batch_size_of

from kernel_stable_cascade.pipeline_common import _CascadeStage, check_text_inputs

PRIOR_OUTPUT_TYPES = ("pt", "np")
_HIDDEN_ALIAS = "text_encoder_hidden_states"  # Diffusers' callback name for the token states the prior reads


@dataclass
class StableCascadePriorPipelineOutput(BaseOutput):
    """``image_embeddings`` ``(B, 16, h, w)`` for the decoder, and the text embeddings used (repeated per image;
    the negative ones None without guidance); tensors, or arrays for ``output_type="np"`` (pooled ones stay tensors,
    as in Diffusers)."""

    image_embeddings: Any = None
    prompt_embeds: Any = None
    prompt_embeds_pooled: Any = None
    negative_prompt_embeds: Any = None
    negative_prompt_embeds_pooled: Any = None


class StableCascadePriorPipeline(_CascadeStage):
    """Stage C on the kernel's engine.  Subclass hooks: ``_text_encoder_outputs`` (text), ``_image_conditioning``
    (images), ``_evaluate`` (the denoiser call), ``_latent_shape`` (the embedding grid)."""

    model_cpu_offload_seq = "image_encoder->text_encoder->prior"
    _optional_components = ["image_encoder", "feature_extractor"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", _HIDDEN_ALIAS]
    _latent_rule = "prompts x num_images_per_prompt, the prior's in_channels, ceil(height / resolution_multiple), " \
                   "ceil(width / resolution_multiple)"

    def __init__(self, tokenizer, text_encoder, prior, scheduler, resolution_multiple: float = 42.67,
                 feature_extractor=None, image_encoder=None) -> None:
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, image_encoder=image_encoder,
                              feature_extractor=feature_extractor, prior=prior, scheduler=scheduler)
        self.register_to_config(resolution_multiple=resolution_multiple)

    # ---------------------------------------------------------------- images
    def encode_image(self, images: list, device, dtype, batch_size: int, num_images_per_prompt: int):
        """``(image_embeds, zeros)``: each image's CLIP embedding side by side ``(1, k, C)``, repeated over the batch."""
        if self.image_encoder is None or self.feature_extractor is None:
            raise ValueError("images needs the pipeline's image_encoder and feature_extractor (both None here); "
                             "pass image_embeds instead")
        embeds = []
        for image in images:
            pixels = self.feature_extractor(image, return_tensors="pt").pixel_values.to(device=device, dtype=dtype)
            embeds.append(self.image_encoder(pixels).image_embeds.unsqueeze(1))
        embeds = torch.cat(embeds, dim=1).repeat(batch_size * num_images_per_prompt, 1, 1)
        return embeds, torch.zeros_like(embeds)

    def _image_conditioning(self, call: SimpleNamespace) -> torch.Tensor:
        """The CLIP image embeddings ``(B, k, clip_image_in_channels)`` the prior reads (zeros without images)."""
        dtype = self.prior.dtype
        prompts = batch_size_of(call.prompt, call.prompt_embeds)
        if call.images is not None:
            return self.encode_image(call.images, call.device, dtype, prompts, call.num_images_per_prompt)[0]
        if call.image_embeds is not None:
            embeds = call.image_embeds.to(device=call.device, dtype=dtype)
            if embeds.shape[0] == 1:
                return embeds.repeat(call.batch, 1, 1)
            return embeds.repeat_interleave(call.num_images_per_prompt, dim=0)
        return torch.zeros(call.batch, 1, self.prior.config.clip_image_in_channels, device=call.device, dtype=dtype)

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        check_text_inputs(call)
        if call.output_type not in PRIOR_OUTPUT_TYPES:
            raise ValueError(f"output_type={call.output_type!r} is not supported by the prior; use one of "
                             f"{list(PRIOR_OUTPUT_TYPES)}")
        for name in ("height", "width"):
            value = getattr(call, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int (pixels of the final image), got {value!r}")
        if call.images is not None and call.image_embeds is not None:
            raise ValueError("pass either images or image_embeds, not both")
        if call.images is not None:
            images = call.images if isinstance(call.images, (list, tuple)) else [call.images]
            import PIL.Image

            for i, image in enumerate(images):
                if not isinstance(image, (torch.Tensor, PIL.Image.Image)):
                    raise TypeError(f"images must hold PIL images or torch tensors; item {i} is {type(image).__name__}")
            call.images = list(images) or None
        if call.image_embeds is not None:
            embeds = call.image_embeds
            width = self.prior.config.clip_image_in_channels
            if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or embeds.shape[-1] != width:
                raise ValueError(f"image_embeds must be a (1 or prompts, images, {width}) tensor, got "
                                 f"{tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__}")
            prompts = batch_size_of(call.prompt, call.prompt_embeds) if call.prompt is not None or \
                call.prompt_embeds is not None else 1
            if embeds.shape[0] not in (1, prompts):
                raise ValueError(f"image_embeds has {embeds.shape[0]} rows for {prompts} prompts; give 1 or one per prompt")

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        text, negative_text = self._text_conditioning(call, negative, call.num_images_per_prompt)
        image = self._image_conditioning(call)
        # the image embeddings first: their dtype (the prior's) is the latents' dtype
        positive = {"image_embeds": image, **text}
        negative_side = None if negative_text is None else {"image_embeds": torch.zeros_like(image), **negative_text}
        call.cond = Conditioning(positive, negative_side)
        return call.cond

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        r = self.config.resolution_multiple
        return (call.batch, self.prior.config.in_channels, math.ceil(call.height / r), math.ceil(call.width / r))

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        return self.prior(sample=model_input, timestep_ratio=self._ratio(timestep, model_input),
                          clip_text_pooled=cond["prompt_embeds_pooled"], clip_text=cond["prompt_embeds"],
                          clip_img=cond["image_embeds"], return_dict=False, **kwargs)[0]

    def _callback_view(self, name, latents, cond):
        return super()._callback_view("prompt_embeds" if name == _HIDDEN_ALIAS else name, latents, cond)

    def _step_callback(self, callback, names, i, t, latents, cond):
        def renamed(pipe, step, timestep, tensors):
            out = callback(pipe, step, timestep, tensors)
            if isinstance(out, dict) and _HIDDEN_ALIAS in out:
                out = dict(out)
                out["prompt_embeds"] = out.pop(_HIDDEN_ALIAS)
            return out

        return super()._step_callback(renamed, names, i, t, latents, cond)

    def _decode(self, latents: torch.Tensor, call: SimpleNamespace):
        return latents

    def _output(self, latents, call: SimpleNamespace):
        pos, neg = call.cond.positive, call.cond.negative or {}
        values = [latents, pos["prompt_embeds"], pos["prompt_embeds_pooled"], neg.get("prompt_embeds"),
                  neg.get("prompt_embeds_pooled")]
        if call.output_type == "np":
            for i in (0, 1, 3):  # as Diffusers: the pooled embeddings stay tensors
                if values[i] is not None:
                    values[i] = values[i].cpu().float().numpy()
        if not call.return_dict:
            return tuple(values)
        return StableCascadePriorPipelineOutput(*values)

    # ---------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        images: Any = None,
        height: int = 1024,
        width: int = 1024,
        num_inference_steps: int = 20,
        timesteps: list[float] | None = None,
        guidance_scale: float = 4.0,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_pooled: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds_pooled: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        num_images_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pt",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
    ):
        return self._generate(locals())
