"""Stable Diffusion 1.x / 2.x: text-to-image, image-to-image (SDEdit) and inpainting.

Safety checker and feature extractor components are accepted (``None`` included, with
``requires_safety_checker=False``) so Diffusers folders load and save unchanged, but no safety
checker model is run: ``nsfw_content_detected`` is always ``None``.  ``image_encoder``
(IP-Adapter) is accepted and stored, not used.
"""

from __future__ import annotations

from typing import Any, Callable

import PIL.Image
import torch

from kernel.image_processor import VaeImageProcessor
from kernel_clip import encode_prompt as clip_encode_prompt

from kernel_sd.base import StableDiffusionBase, default_callback_names
from kernel.pipeline_utils import repeat_to_batch
from kernel_sd.common import (
    batch_size_of,
    check_callback_inputs,
    check_embeds,
    check_generators,
    check_image_mask_sizes,
    check_size,
    check_steps_left,
    check_strength,
    randn_tensor,
    retrieve_timesteps,
    step_kwargs,
    strength_timesteps,
)
from kernel_sd.outputs import StableDiffusionPipelineOutput


class _StableDiffusionCommon(StableDiffusionBase):
    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]
    _exclude_from_cpu_offload = ["safety_checker"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker: bool = True,
    ) -> None:
        self._normalise_scheduler_config(scheduler)
        if safety_checker is not None and feature_extractor is None:
            raise ValueError("safety_checker needs a feature_extractor; pass one, or safety_checker=None")
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=safety_checker, feature_extractor=feature_extractor, image_encoder=image_encoder,
        )
        self.register_to_config(requires_safety_checker=requires_safety_checker)
        self._setup_processors()

    def encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None,
                      prompt_embeds=None, negative_prompt_embeds=None, lora_scale=None, clip_skip=None):
        """``(prompt_embeds, negative_prompt_embeds)``; see :func:`kernel_clip.encode_prompt`."""
        fallback = self.unet.dtype if getattr(self, "unet", None) is not None else None
        return clip_encode_prompt(
            self.tokenizer, self.text_encoder, prompt, device, num_images_per_prompt, do_classifier_free_guidance,
            negative_prompt, prompt_embeds, negative_prompt_embeds, lora_scale, clip_skip,
            dtype=fallback, options=self.prompt_options,
        )

    # -- shared call pieces
    def _check_common(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, callback_names,
                      num_images_per_prompt) -> None:
        check_callback_inputs(callback_names, self._callback_tensor_inputs)
        check_embeds(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds)
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive int, got {num_images_per_prompt!r}")

    def _conditioning(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
                      device) -> dict[str, torch.Tensor]:
        lora_scale = (self.cross_attention_kwargs or {}).get("scale")
        pos, neg = self.encode_prompt(prompt, device, num_images_per_prompt, self.do_classifier_free_guidance,
                                      negative_prompt, prompt_embeds, negative_prompt_embeds, lora_scale,
                                      self.clip_skip)
        state = {"negative_prompt_embeds": neg}
        state["prompt_embeds"] = torch.cat([neg, pos]) if self.do_classifier_free_guidance else pos
        return state

    def _finish(self, latents, output_type, return_dict):
        self._warn_unused_safety_checker()
        if output_type == "latent":
            image = latents
        else:
            image = self._decode(latents, upcast=False)
            image = self.image_processor.postprocess(image, output_type=output_type,
                                                     do_denormalize=[True] * image.shape[0])
        self.maybe_free_model_hooks()
        if not return_dict:
            return image, None
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=None)


class StableDiffusionPipeline(_StableDiffusionCommon):
    """Text-to-image with Stable Diffusion 1.x / 2.x."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
    ):
        if not height or not width:
            height, width = self._default_size()
        check_size(height, width, self.vae_scale_factor)
        self._check_common(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                           callback_on_step_end_tensor_inputs, num_images_per_prompt)
        self._begin_call(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs)
        batch = batch_size_of(prompt, prompt_embeds) * num_images_per_prompt
        check_generators(generator, batch)
        device = self._execution_device

        state = self._conditioning(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                   num_images_per_prompt, device)
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device,
                                                            timesteps, sigmas)
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        dtype = state["prompt_embeds"].dtype
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device)
        state["latents"] = latents * self.scheduler.init_noise_sigma

        latents = self._denoise(
            state, timesteps, num_inference_steps,
            extra_step_kwargs=step_kwargs(self.scheduler, generator, eta),
            callback=callback_on_step_end, callback_names=default_callback_names(callback_on_step_end_tensor_inputs),
            timestep_cond=self._timestep_cond(batch, device, state["latents"].dtype),
        )
        return self._finish(latents, output_type, return_dict)


class StableDiffusionImg2ImgPipeline(_StableDiffusionCommon):
    """Image-to-image (SDEdit, Meng et al. 2021): noise the input's latents to ``strength`` and denoise."""

    def _initial_latents(self, image, timestep, batch, dtype, device, generator):
        image = image.to(device=device, dtype=dtype)
        if image.shape[1] == self.vae.config.latent_channels:
            init = image
        else:
            if isinstance(generator, list):
                image = repeat_to_batch(image, batch, "images")
            init = self.vae.config.scaling_factor * self._encode_image_latents(image, generator, upcast=False)
        init = repeat_to_batch(init, batch, "images")
        noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
        return self.scheduler.add_noise(init, noise, timestep)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image=None,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
    ):
        check_strength(strength)
        if image is None:
            raise ValueError("image is required for image-to-image")
        self._check_common(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                           callback_on_step_end_tensor_inputs, num_images_per_prompt)
        self._begin_call(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs)
        batch = batch_size_of(prompt, prompt_embeds) * num_images_per_prompt
        check_generators(generator, batch)
        device = self._execution_device

        state = self._conditioning(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                   num_images_per_prompt, device)
        image = self.image_processor.preprocess(image)
        _, steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        timesteps, num_inference_steps = strength_timesteps(self.scheduler, steps, strength)
        check_steps_left(num_inference_steps, strength)
        start = timesteps[:1].repeat(batch)
        state["latents"] = self._initial_latents(image, start, batch, state["prompt_embeds"].dtype, device, generator)

        latents = self._denoise(
            state, timesteps, num_inference_steps,
            extra_step_kwargs=step_kwargs(self.scheduler, generator, eta),
            callback=callback_on_step_end, callback_names=default_callback_names(callback_on_step_end_tensor_inputs),
            timestep_cond=self._timestep_cond(batch, device, state["latents"].dtype),
        )
        return self._finish(latents, output_type, return_dict)


class StableDiffusionInpaintPipeline(_StableDiffusionCommon):
    """Inpainting: repaint where ``mask_image`` is white.

    A 9-channel UNet (an inpainting checkpoint) sees the mask and the masked image's latents as
    extra input channels; a 4-channel UNet is steered by pasting the noised original latents back
    outside the mask after every step (as RePaint-style blending does).
    """

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                 image_encoder=None, requires_safety_checker: bool = True) -> None:
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self.mask_processor = VaeImageProcessor.for_masks(self.vae_scale_factor)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image=None,
        mask_image=None,
        masked_image_latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        padding_mask_crop: int | None = None,
        strength: float = 1.0,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
    ):
        dh, dw = self._default_size()
        height, width = height or dh, width or dw
        check_strength(strength)
        check_size(height, width, self.vae_scale_factor)
        check_inpaint_inputs(image, mask_image, padding_mask_crop, output_type)
        self._check_common(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                           callback_on_step_end_tensor_inputs, num_images_per_prompt)
        self._begin_call(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs)
        batch = batch_size_of(prompt, prompt_embeds) * num_images_per_prompt
        check_generators(generator, batch)
        device = self._execution_device

        state = self._conditioning(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                   num_images_per_prompt, device)
        dtype = state["prompt_embeds"].dtype
        _, steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        timesteps, num_inference_steps = strength_timesteps(self.scheduler, steps, strength)
        check_steps_left(num_inference_steps, strength)
        start = timesteps[:1].repeat(batch)
        full_strength = strength == 1.0

        crop, resize_mode = inpaint_crop(self.mask_processor, mask_image, width, height, padding_mask_crop)
        original_image = image
        init_image = self.image_processor.preprocess(image, height=height, width=width, crops_coords=crop,
                                                     resize_mode=resize_mode).to(dtype=torch.float32)
        unet_channels = self.unet.config.in_channels
        latent_channels = self.vae.config.latent_channels
        blend = unet_channels == latent_channels

        shape = (batch, latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        image_latents = None
        if blend or (latents is None and not full_strength):
            image_latents = self._scaled_latents(init_image.to(device=device, dtype=dtype), generator)
            image_latents = image_latents.repeat(batch // image_latents.shape[0], 1, 1, 1)
        if latents is None:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            if full_strength:
                latents = noise * self.scheduler.init_noise_sigma
            else:
                latents = self.scheduler.add_noise(image_latents, noise, start)
        else:
            noise = latents.to(device)
            latents = noise * self.scheduler.init_noise_sigma

        mask_condition = self.mask_processor.preprocess(mask_image, height=height, width=width,
                                                        resize_mode=resize_mode, crops_coords=crop)
        masked = init_image * (mask_condition < 0.5) if masked_image_latents is None else masked_image_latents
        mask, masked_latents = self._mask_inputs(mask_condition, masked, batch, height, width, dtype, device, generator)
        if not blend and latent_channels + mask.shape[1] + masked_latents.shape[1] != unet_channels:
            raise ValueError(
                f"the unet takes {unet_channels} input channels but latents ({latent_channels}) + mask "
                f"({mask.shape[1]}) + masked image latents ({masked_latents.shape[1]}) give "
                f"{latent_channels + mask.shape[1] + masked_latents.shape[1]}; use a 4- or 9-channel inpainting unet"
            )
        state.update(latents=latents, mask=mask, masked_image_latents=masked_latents)
        guided = self.do_classifier_free_guidance

        def paste_original(i, latents, state):
            init_mask = state["mask"].chunk(2)[0] if guided else state["mask"]
            proper = image_latents
            if i < len(timesteps) - 1:
                proper = self.scheduler.add_noise(proper, noise, timesteps[i + 1:i + 2])
            return (1 - init_mask) * proper + init_mask * latents

        latents = self._denoise(
            state, timesteps, num_inference_steps,
            extra_step_kwargs=step_kwargs(self.scheduler, generator, eta),
            callback=callback_on_step_end, callback_names=default_callback_names(callback_on_step_end_tensor_inputs),
            timestep_cond=self._timestep_cond(batch, device, latents.dtype),
            extra_channels=None if blend else (lambda s: [s["mask"], s["masked_image_latents"]]),
            after_step=paste_original if blend else None,
        )
        out = self._finish(latents, output_type, False)[0]
        if padding_mask_crop is not None:
            out = [self.image_processor.apply_overlay(mask_image, original_image, im, crop) for im in out]
        if not return_dict:
            return out, None
        return StableDiffusionPipelineOutput(images=out, nsfw_content_detected=None)

    def _scaled_latents(self, images, generator):
        if images.shape[1] == self.vae.config.latent_channels:
            return images
        return self.vae.config.scaling_factor * self._encode_image_latents(images, generator, upcast=False)

    def _mask_inputs(self, mask, masked_image, batch, height, width, dtype, device, generator):
        """Mask downsampled to the latent grid and the masked image's latents, batched (and doubled
        under guidance)."""
        mask = torch.nn.functional.interpolate(mask, size=(height // self.vae_scale_factor, width // self.vae_scale_factor))
        mask = mask.to(device=device, dtype=dtype)
        masked_latents = self._scaled_latents(masked_image.to(device=device, dtype=dtype), generator)
        mask = repeat_to_batch(mask, batch, "mask_image")
        masked_latents = repeat_to_batch(masked_latents, batch, "image")
        if self.do_classifier_free_guidance:
            mask, masked_latents = torch.cat([mask] * 2), torch.cat([masked_latents] * 2)
        return mask, masked_latents.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------- inpainting helpers
def check_inpaint_inputs(image, mask_image, padding_mask_crop, output_type) -> None:
    if image is None:
        raise ValueError("image is required for inpainting")
    if mask_image is None:
        raise ValueError("mask_image is required for inpainting")
    check_image_mask_sizes(image, mask_image)
    if padding_mask_crop is not None:
        if not isinstance(image, PIL.Image.Image):
            raise ValueError(f"padding_mask_crop needs image as a PIL image, got {type(image).__name__}")
        if not isinstance(mask_image, PIL.Image.Image):
            raise ValueError(f"padding_mask_crop needs mask_image as a PIL image, got {type(mask_image).__name__}")
        if output_type != "pil":
            raise ValueError(f"padding_mask_crop needs output_type='pil', got {output_type!r}")


def inpaint_crop(mask_processor, mask_image, width, height, padding_mask_crop):
    if padding_mask_crop is None:
        return None, "default"
    return mask_processor.get_crop_region(mask_image, width, height, pad=padding_mask_crop), "fill"


