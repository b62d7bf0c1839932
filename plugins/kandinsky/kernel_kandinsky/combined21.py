"""Kandinsky 2.1 in one call: :class:`~kernel_kandinsky.kandinsky21.KandinskyPriorPipeline` then
:class:`~kernel_kandinsky.kandinsky21.KandinskyPipeline`, by composition over shared components (the
prior's prefixed ``prior_``, as in Diffusers' folders).  Both stages run the kernel's engine."""

from __future__ import annotations

from typing import Any, Callable

import PIL.Image
import torch

from kernel.pipeline import DiffusionPipeline
from kernel.pipeline_utils import check_strength

from kernel_kandinsky.combined import _tile
from kernel_kandinsky.kandinsky21 import (
    KandinskyImg2ImgPipeline,
    KandinskyInpaintPipeline,
    KandinskyPipeline,
    KandinskyPriorPipeline,
    _DiffusersIndexNames,
)
from kernel_kandinsky.prior import check_stage_pair


class _KandinskyCombined(_DiffusersIndexNames, DiffusionPipeline):
    """The two stages over shared components.  As in Diffusers, ``negative_prompt`` steers the prior only,
    ``latents`` are the prior's, and the decoder gets the prompt list repeated whole (not per image) up to the
    prior's ``num_images_per_prompt`` rows."""

    pipeline_family = "kandinsky-2-1"  # a 2.1 folder is not a 2.2 one (kernel.load("kandinsky-2-2", ...) refuses it)
    model_cpu_offload_seq = "text_encoder->unet->movq->prior_prior->prior_image_encoder->prior_text_encoder"
    _load_connected_pipes = True
    _exclude_from_cpu_offload = ["prior_prior"]
    _decoder_class: type = KandinskyPipeline

    def __init__(self, text_encoder, tokenizer, unet, scheduler, movq, prior_prior, prior_image_encoder,
                 prior_text_encoder, prior_tokenizer, prior_scheduler, prior_image_processor) -> None:
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              movq=movq, prior_prior=prior_prior, prior_image_encoder=prior_image_encoder,
                              prior_text_encoder=prior_text_encoder, prior_tokenizer=prior_tokenizer,
                              prior_scheduler=prior_scheduler, prior_image_processor=prior_image_processor)
        self.prior_pipe = KandinskyPriorPipeline(prior=prior_prior, image_encoder=prior_image_encoder,
                                                 text_encoder=prior_text_encoder, tokenizer=prior_tokenizer,
                                                 scheduler=prior_scheduler, image_processor=prior_image_processor)
        self.decoder_pipe = self._decoder_class(text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                              scheduler=scheduler, movq=movq)
        check_stage_pair(self.prior_pipe, self.decoder_pipe)

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        super().set_progress_bar_config(**kwargs)
        self.prior_pipe.set_progress_bar_config(**kwargs)
        self.decoder_pipe.set_progress_bar_config(**kwargs)

    def _prior(self, prompt, negative_prompt, num_images_per_prompt, steps, generator, latents, guidance_scale):
        """``(image_embeds, negative_image_embeds, prompts)``: the prompts tiled to the embeddings' rows."""
        embeds, negative = self.prior_pipe(prompt=prompt, negative_prompt=negative_prompt,
                                           num_images_per_prompt=num_images_per_prompt, num_inference_steps=steps,
                                           generator=generator, latents=latents, guidance_scale=guidance_scale,
                                           output_type="pt", return_dict=False)
        prompts = [prompt] if isinstance(prompt, str) else prompt
        return embeds, negative, _tile(prompts, embeds.shape[0])


class KandinskyCombinedPipeline(_KandinskyCombined):
    """Text-to-image with Kandinsky 2.1: prompt -> prior image embedding -> decoder (which reads the prompt too)."""

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
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ):
        embeds, negative, prompts = self._prior(prompt, negative_prompt, num_images_per_prompt,
                                                prior_num_inference_steps, generator, latents, prior_guidance_scale)
        outputs = self.decoder_pipe(prompt=prompts, image_embeds=embeds, negative_image_embeds=negative,
                                    height=height, width=width, num_inference_steps=num_inference_steps,
                                    generator=generator, guidance_scale=guidance_scale, output_type=output_type,
                                    callback=callback, callback_steps=callback_steps, return_dict=return_dict)
        self.maybe_free_model_hooks()
        return outputs


class KandinskyImg2ImgCombinedPipeline(_KandinskyCombined):
    """Image-to-image with Kandinsky 2.1: prior, then :class:`KandinskyImg2ImgPipeline` (a shorter image list
    is repeated whole up to the embeddings' rows, as the prompts are)."""

    _decoder_class = KandinskyImg2ImgPipeline

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: torch.Tensor | PIL.Image.Image | list,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        strength: float = 0.3,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ):
        check_strength(strength)  # before the prior runs
        embeds, negative, prompts = self._prior(prompt, negative_prompt, num_images_per_prompt,
                                                prior_num_inference_steps, generator, latents, prior_guidance_scale)
        outputs = self.decoder_pipe(prompt=prompts, image=_tile(image, embeds.shape[0]), image_embeds=embeds,
                                    negative_image_embeds=negative, strength=strength, height=height, width=width,
                                    num_inference_steps=num_inference_steps, generator=generator,
                                    guidance_scale=guidance_scale, output_type=output_type, callback=callback,
                                    callback_steps=callback_steps, return_dict=return_dict)
        self.maybe_free_model_hooks()
        return outputs


class KandinskyInpaintCombinedPipeline(_KandinskyCombined):
    """Inpainting with Kandinsky 2.1: prior, then :class:`KandinskyInpaintPipeline` (image and mask lists
    shorter than the embeddings' rows are repeated whole; a single PIL mask is taken as a list of one)."""

    _decoder_class = KandinskyInpaintPipeline

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
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ):
        embeds, negative, prompts = self._prior(prompt, negative_prompt, num_images_per_prompt,
                                                prior_num_inference_steps, generator, latents, prior_guidance_scale)
        rows = embeds.shape[0]
        masks = [mask_image] if isinstance(mask_image, PIL.Image.Image) else mask_image
        outputs = self.decoder_pipe(prompt=prompts, image=_tile(image, rows), mask_image=_tile(masks, rows),
                                    image_embeds=embeds, negative_image_embeds=negative, height=height, width=width,
                                    num_inference_steps=num_inference_steps, generator=generator,
                                    guidance_scale=guidance_scale, output_type=output_type, callback=callback,
                                    callback_steps=callback_steps, return_dict=return_dict)
        self.maybe_free_model_hooks()
        return outputs
