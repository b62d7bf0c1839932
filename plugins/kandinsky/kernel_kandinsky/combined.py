"""Kandinsky 2.2 in one call: the prior (text -> image embedding) then a decoder, by composition.

Each combined pipeline owns the nine components of both stages (the prior's prefixed ``prior_``, as in
Diffusers' folders) and builds the two stage pipelines over the same modules; ``__call__`` runs the prior
and hands its embeddings to the decoder.  Neither stage has a loop of its own: both run the kernel's engine.
"""

from __future__ import annotations

from typing import Any, Callable

import PIL.Image
import torch

from kernel.pipeline import DiffusionPipeline
from kernel.pipeline_utils import check_strength

from kernel_kandinsky.decoder import KandinskyV22Img2ImgPipeline, KandinskyV22InpaintPipeline, KandinskyV22Pipeline
from kernel_kandinsky.prior import KandinskyV22PriorPipeline, check_stage_pair


def _tile(items: Any, count: int) -> Any:
    """A list shorter than ``count`` (and dividing it) repeated whole up to ``count`` items, as Diffusers does."""
    if isinstance(items, (list, tuple)) and 0 < len(items) < count and count % len(items) == 0:
        return list(items) * (count // len(items))
    return items


class _KandinskyV22Combined(DiffusionPipeline):
    """The two stages over shared components; subclasses pick the decoder and write ``__call__``."""

    pipeline_family = "kandinsky"
    model_cpu_offload_seq = "prior_text_encoder->prior_image_encoder->unet->movq"
    _load_connected_pipes = True
    _exclude_from_cpu_offload = ["prior_prior"]
    _decoder_class: type = KandinskyV22Pipeline

    def __init__(self, unet, scheduler, movq, prior_prior, prior_image_encoder, prior_text_encoder, prior_tokenizer,
                 prior_scheduler, prior_image_processor) -> None:
        self.register_modules(unet=unet, scheduler=scheduler, movq=movq, prior_prior=prior_prior,
                              prior_image_encoder=prior_image_encoder, prior_text_encoder=prior_text_encoder,
                              prior_tokenizer=prior_tokenizer, prior_scheduler=prior_scheduler,
                              prior_image_processor=prior_image_processor)
        self.prior_pipe = KandinskyV22PriorPipeline(prior=prior_prior, image_encoder=prior_image_encoder,
                                                    text_encoder=prior_text_encoder, tokenizer=prior_tokenizer,
                                                    scheduler=prior_scheduler, image_processor=prior_image_processor)
        self.decoder_pipe = self._decoder_class(unet=unet, scheduler=scheduler, movq=movq)
        check_stage_pair(self.prior_pipe, self.decoder_pipe)

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        super().set_progress_bar_config(**kwargs)
        self.prior_pipe.set_progress_bar_config(**kwargs)
        self.decoder_pipe.set_progress_bar_config(**kwargs)

    def _prior(self, prompt, negative_prompt, num_images_per_prompt, steps, generator, latents, guidance_scale,
               callback_on_step_end, tensor_inputs) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prior_pipe(prompt=prompt, negative_prompt=negative_prompt,
                               num_images_per_prompt=num_images_per_prompt, num_inference_steps=steps,
                               generator=generator, latents=latents, guidance_scale=guidance_scale, output_type="pt",
                               return_dict=False, callback_on_step_end=callback_on_step_end,
                               callback_on_step_end_tensor_inputs=tensor_inputs)

    def _finish(self, outputs):
        self.maybe_free_model_hooks()
        return outputs


class KandinskyV22CombinedPipeline(_KandinskyV22Combined):
    """Text-to-image: prior, then :class:`KandinskyV22Pipeline` (``latents`` are the prior's, as in Diffusers)."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        callback: Callable | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
        prior_callback_on_step_end: Callable | None = None,
        prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
    ):
        embeds, negative = self._prior(prompt, negative_prompt, num_images_per_prompt, prior_num_inference_steps,
                                       generator, latents, prior_guidance_scale, prior_callback_on_step_end,
                                       prior_callback_on_step_end_tensor_inputs)
        return self._finish(self.decoder_pipe(
            image_embeds=embeds, negative_image_embeds=negative, width=width, height=height,
            num_inference_steps=num_inference_steps, generator=generator, guidance_scale=guidance_scale,
            output_type=output_type, callback=callback, callback_steps=callback_steps, return_dict=return_dict,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs))


class KandinskyV22Img2ImgCombinedPipeline(_KandinskyV22Combined):
    """Image-to-image: prior, then :class:`KandinskyV22Img2ImgPipeline`."""

    _decoder_class = KandinskyV22Img2ImgPipeline

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: torch.Tensor | PIL.Image.Image | list,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        strength: float = 0.3,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        callback: Callable | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
        prior_callback_on_step_end: Callable | None = None,
        prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
    ):
        check_strength(strength)  # before the prior runs
        embeds, negative = self._prior(prompt, negative_prompt, num_images_per_prompt, prior_num_inference_steps,
                                       generator, latents, prior_guidance_scale, prior_callback_on_step_end,
                                       prior_callback_on_step_end_tensor_inputs)
        image = _tile([image] if isinstance(image, PIL.Image.Image) else image, embeds.shape[0])
        return self._finish(self.decoder_pipe(
            image_embeds=embeds, image=image, negative_image_embeds=negative, width=width, height=height,
            strength=strength, num_inference_steps=num_inference_steps, generator=generator,
            guidance_scale=guidance_scale, output_type=output_type, callback=callback, callback_steps=callback_steps,
            return_dict=return_dict, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs))


class KandinskyV22InpaintCombinedPipeline(_KandinskyV22Combined):
    """Inpainting: prior, then :class:`KandinskyV22InpaintPipeline`."""

    _decoder_class = KandinskyV22InpaintPipeline

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: torch.Tensor | PIL.Image.Image | list,
        mask_image: torch.Tensor | PIL.Image.Image | list,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        prior_callback_on_step_end: Callable | None = None,
        prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
        **kwargs: Any,
    ):
        embeds, negative = self._prior(prompt, negative_prompt, num_images_per_prompt, prior_num_inference_steps,
                                       generator, latents, prior_guidance_scale, prior_callback_on_step_end,
                                       prior_callback_on_step_end_tensor_inputs)
        count = embeds.shape[0]
        image = _tile([image] if isinstance(image, PIL.Image.Image) else image, count)
        mask_image = _tile([mask_image] if isinstance(mask_image, PIL.Image.Image) else mask_image, count)
        return self._finish(self.decoder_pipe(
            image=image, mask_image=mask_image, image_embeds=embeds, negative_image_embeds=negative, width=width,
            height=height, num_inference_steps=num_inference_steps, generator=generator,
            guidance_scale=guidance_scale, output_type=output_type, return_dict=return_dict,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, **kwargs))
