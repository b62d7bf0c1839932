"""Stable Diffusion XL (Podell et al. 2023): text-to-image, image-to-image / refiner, inpainting.

SDXL conditions the UNet on two text encoders (penultimate hidden states concatenated), the
second encoder's pooled embedding, and "micro-conditioning" time ids: original size, crop
top-left and target size (or, for the refiner, an aesthetic score instead of the target size).
Base and refiner hand over with ``denoising_end`` / ``denoising_start`` (fractions of the
training schedule).  No invisible watermark is applied (``add_watermarker`` is accepted and
ignored).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from kernel.image_processor import VaeImageProcessor
from kernel_clip import encode_prompt_xl

from kernel_sd.base import StableDiffusionBase, default_callback_names
from kernel_sd.common import (
    _is_fraction,
    batch_size_of,
    check_callback_inputs,
    check_denoising_window,
    check_embeds,
    check_generators,
    check_size,
    check_steps_left,
    check_strength,
    randn_tensor,
    retrieve_timesteps,
    step_kwargs,
    strength_timesteps,
    truncate_for_denoising_end,
)
from kernel_sd.outputs import StableDiffusionXLPipelineOutput
from kernel.pipeline_utils import check_pooled, repeat_to_batch
from kernel_sd.sd import check_inpaint_inputs, inpaint_crop


class _StableDiffusionXLCommon(StableDiffusionBase):
    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->vae"
    _optional_components = ["tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "image_encoder",
                            "feature_extractor"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"]

    def _register(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                  image_encoder, feature_extractor, **config) -> None:
        self.register_modules(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.register_to_config(**config)
        self._setup_processors()
        unet_cfg = getattr(unet, "config", None)
        self.default_sample_size = getattr(unet_cfg, "sample_size", 128) if unet is not None else 128
        self.watermark = None

    def encode_prompt(self, prompt, prompt_2=None, device=None, num_images_per_prompt=1,
                      do_classifier_free_guidance=True, negative_prompt=None, negative_prompt_2=None,
                      prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                      negative_pooled_prompt_embeds=None, lora_scale=None, clip_skip=None):
        """``(prompt_embeds, negative_prompt_embeds, pooled, negative_pooled)``; see
        :func:`kernel_clip.encode_prompt_xl`."""
        fallback = self.unet.dtype if getattr(self, "unet", None) is not None else None
        return encode_prompt_xl(
            [self.tokenizer, self.tokenizer_2], [self.text_encoder, self.text_encoder_2], prompt, prompt_2,
            device or self._execution_device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt,
            negative_prompt_2, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
            negative_pooled_prompt_embeds, lora_scale, clip_skip,
            force_zeros_for_empty_prompt=self.config.force_zeros_for_empty_prompt, dtype=fallback,
            options=self.prompt_options,
        )

    @property
    def denoising_end(self):
        return self._denoising_end

    @property
    def denoising_start(self):
        return getattr(self, "_denoising_start", None)

    # -- shared call pieces
    def _check_common(self, prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds,
                      negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
                      callback_names, num_images_per_prompt) -> None:
        check_callback_inputs(callback_names, self._callback_tensor_inputs)
        check_embeds(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds,
                     prompt_2=prompt_2, negative_prompt_2=negative_prompt_2)
        check_pooled(prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds)
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive int, got {num_images_per_prompt!r}")

    def _conditioning(self, device, num_images_per_prompt, **prompts) -> dict[str, torch.Tensor]:
        lora_scale = (self.cross_attention_kwargs or {}).get("scale")
        pos, neg, pooled, neg_pooled = self.encode_prompt(
            device=device, num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=self.do_classifier_free_guidance, lora_scale=lora_scale,
            clip_skip=self.clip_skip, **prompts,
        )
        return {"prompt_embeds": pos, "negative_prompt_embeds": neg, "pooled_prompt_embeds": pooled,
                "negative_pooled_prompt_embeds": neg_pooled}

    def _projection_dim(self, pooled: torch.Tensor) -> int:
        if self.text_encoder_2 is None:
            return int(pooled.shape[-1])
        return self.text_encoder_2.config.projection_dim

    def _time_ids(self, values: list, projection_dim: int, dtype) -> torch.Tensor:
        """``[1, n]`` micro-conditioning ids, checked against the UNet's added-embedding width."""
        passed = self.unet.config.addition_time_embed_dim * len(values) + projection_dim
        expected = self.unet.add_embedding.linear_1.in_features
        if passed != expected:
            hint = ""
            step = self.unet.config.addition_time_embed_dim
            if hasattr(self.config, "requires_aesthetics_score"):
                if expected - passed == step:
                    hint = " (set requires_aesthetics_score=True: this UNet expects an aesthetic score)"
                elif passed - expected == step:
                    hint = " (set requires_aesthetics_score=False: this UNet expects a target size)"
            raise ValueError(
                f"the UNet expects added time embeddings of width {expected} but the time ids and pooled "
                f"embeddings give {passed}{hint}; check unet.config.addition_time_embed_dim and "
                "text_encoder_2.config.projection_dim"
            )
        return torch.tensor([list(values)], dtype=dtype)

    def _guided_conditioning(self, state, add_time_ids, negative_add_time_ids, batch, device, repeat_first: bool):
        """Stack ``[negative; positive]`` for guidance and put the UNet's added inputs in ``state``."""
        embeds, text_embeds = state["prompt_embeds"], state["pooled_prompt_embeds"]
        if repeat_first:
            # The refiner-style pipelines repeat each half before stacking; the base stacks first.
            add_time_ids = add_time_ids.repeat(batch, 1)
            negative_add_time_ids = negative_add_time_ids.repeat(batch, 1)
        if self.do_classifier_free_guidance:
            embeds = torch.cat([state["negative_prompt_embeds"], embeds])
            text_embeds = torch.cat([state["negative_pooled_prompt_embeds"], text_embeds])
            add_time_ids = torch.cat([negative_add_time_ids, add_time_ids])
        add_time_ids = add_time_ids.to(device)
        if not repeat_first:
            add_time_ids = add_time_ids.repeat(batch, 1)
        state.update(prompt_embeds=embeds.to(device), add_text_embeds=text_embeds.to(device), add_time_ids=add_time_ids)

    @staticmethod
    def _added_cond(state) -> dict:
        return {"text_embeds": state["add_text_embeds"], "time_ids": state["add_time_ids"]}

    def _finish(self, latents, output_type, return_dict, overlay=None):
        if output_type == "latent":
            image = latents
        else:
            image = self._decode(latents, upcast=True)
            image = self.image_processor.postprocess(image, output_type=output_type)
            if overlay is not None:
                image = [overlay(im) for im in image]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return StableDiffusionXLPipelineOutput(images=image)


class StableDiffusionXLPipeline(_StableDiffusionXLCommon):
    """SDXL text-to-image (the base model; ``denoising_end`` hands over to a refiner)."""

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                 image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt: bool = True,
                 add_watermarker: bool | None = None) -> None:
        self._register(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                       feature_extractor, force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
    ):
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        original_size = tuple(original_size or (height, width))
        target_size = tuple(target_size or (height, width))
        check_size(height, width, self.vae_scale_factor)
        check_denoising_window(None, denoising_end)
        self._check_common(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds,
                           negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
                           callback_on_step_end_tensor_inputs, num_images_per_prompt)
        self._begin_call(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs,
                         denoising_end=denoising_end)
        batch = batch_size_of(prompt, prompt_embeds) * num_images_per_prompt
        check_generators(generator, batch)
        device = self._execution_device

        state = self._conditioning(device, num_images_per_prompt, prompt=prompt, prompt_2=prompt_2,
                                   negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
                                   prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                                   pooled_prompt_embeds=pooled_prompt_embeds,
                                   negative_pooled_prompt_embeds=negative_pooled_prompt_embeds)
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device,
                                                            timesteps, sigmas)
        dtype = state["prompt_embeds"].dtype
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype) if latents is None \
            else latents.to(device)
        latents = latents * self.scheduler.init_noise_sigma

        proj = self._projection_dim(state["pooled_prompt_embeds"])
        add_time_ids = self._time_ids([*original_size, *crops_coords_top_left, *target_size], proj, dtype)
        if negative_original_size is not None and negative_target_size is not None:
            negative_ids = self._time_ids([*negative_original_size, *negative_crops_coords_top_left,
                                           *negative_target_size], proj, dtype)
        else:
            negative_ids = add_time_ids
        self._guided_conditioning(state, add_time_ids, negative_ids, batch, device, repeat_first=False)
        state["latents"] = latents

        full_steps = num_inference_steps
        timesteps, count = truncate_for_denoising_end(self.scheduler, timesteps, denoising_end)
        num_inference_steps = full_steps if count is None else count
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        latents = self._denoise(
            state, timesteps, num_inference_steps,
            extra_step_kwargs=step_kwargs(self.scheduler, generator, eta),
            callback=callback_on_step_end, callback_names=default_callback_names(callback_on_step_end_tensor_inputs),
            timestep_cond=self._timestep_cond(batch, device, latents.dtype),
            added_cond=self._added_cond, warmup_floor=True,
        )
        return self._finish(latents, output_type, return_dict)


class _XLImageBase(_StableDiffusionXLCommon):
    """Shared by SDXL image-to-image (refiner) and inpainting."""

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                 image_encoder=None, feature_extractor=None, requires_aesthetics_score: bool = False,
                 force_zeros_for_empty_prompt: bool = True, add_watermarker: bool | None = None) -> None:
        self._register(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                       feature_extractor, force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
                       requires_aesthetics_score=requires_aesthetics_score)
        self.mask_processor = VaeImageProcessor.for_masks(self.vae_scale_factor)  # used by inpainting

    def _schedule(self, num_inference_steps, timesteps, sigmas, strength, denoising_start, device):
        _, steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        start = denoising_start if _is_fraction(denoising_start) else None
        return strength_timesteps(self.scheduler, steps, strength, denoising_start=start)

    def _refiner_time_ids(self, state, latents, batch, device, original_size, crops_coords_top_left, target_size,
                          aesthetic_score, negative_aesthetic_score, negative_original_size,
                          negative_crops_coords_top_left, negative_target_size) -> None:
        height, width = (s * self.vae_scale_factor for s in latents.shape[-2:])
        original_size = tuple(original_size or (height, width))
        target_size = tuple(target_size or (height, width))
        negative_original_size = tuple(negative_original_size or original_size)
        negative_target_size = tuple(negative_target_size or target_size)
        dtype = state["prompt_embeds"].dtype
        proj = self._projection_dim(state["pooled_prompt_embeds"])
        if self.config.requires_aesthetics_score:
            pos = [*original_size, *crops_coords_top_left, aesthetic_score]
            neg = [*negative_original_size, *negative_crops_coords_top_left, negative_aesthetic_score]
        else:
            # Without aesthetic scores Diffusers pairs the negative sizes with the positive crop
            # coordinates; kept for identical numbers.
            pos = [*original_size, *crops_coords_top_left, *target_size]
            neg = [*negative_original_size, *crops_coords_top_left, *negative_target_size]
        self._guided_conditioning(state, self._time_ids(pos, proj, dtype), self._time_ids(neg, proj, dtype),
                                  batch, device, repeat_first=True)

    def _truncate(self, timesteps, num_inference_steps, denoising_end):
        """Stop at ``denoising_end`` (``denoising_start < denoising_end`` was checked up front)."""
        timesteps, count = truncate_for_denoising_end(self.scheduler, timesteps, denoising_end)
        return timesteps, num_inference_steps if count is None else count

    def _run(self, state, timesteps, num_inference_steps, generator, eta,
             callback_on_step_end, callback_names, batch, device, **loop):
        return self._denoise(
            state, timesteps, num_inference_steps,
            extra_step_kwargs=step_kwargs(self.scheduler, generator, eta),
            callback=callback_on_step_end, callback_names=default_callback_names(callback_names),
            timestep_cond=self._timestep_cond(batch, device, state["latents"].dtype),
            added_cond=self._added_cond, warmup_floor=True, **loop,
        )


class StableDiffusionXLImg2ImgPipeline(_XLImageBase):
    """SDXL image-to-image, and the SDXL refiner (``requires_aesthetics_score=True``, only
    ``text_encoder_2``): with ``denoising_start`` it continues a base model's ``output_type="latent"``
    result from where ``denoising_end`` stopped it."""

    def _initial_latents(self, image, timestep, batch, dtype, device, generator, add_noise):
        cfg = self.vae.config
        image = image.to(device=device, dtype=dtype)
        if image.shape[1] == cfg.latent_channels:
            init = image
        else:
            if isinstance(generator, list):
                image = repeat_to_batch(image, batch, "images")
            init = self._encode_image_latents(image, generator, upcast=True)
            mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
            if mean is not None and std is not None:
                mean = torch.tensor(mean).view(1, -1, 1, 1).to(device=device, dtype=dtype)
                std = torch.tensor(std).view(1, -1, 1, 1).to(device=device, dtype=dtype)
                init = (init - mean) * cfg.scaling_factor / std
            else:
                init = cfg.scaling_factor * init
        init = repeat_to_batch(init, batch, "images")
        if add_noise:
            noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
            init = self.scheduler.add_noise(init, noise, timestep)
        return init

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image=None,
        strength: float = 0.3,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
    ):
        check_strength(strength)
        check_denoising_window(denoising_start, denoising_end)
        if image is None:
            raise ValueError("image is required for image-to-image")
        self._check_common(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds,
                           negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
                           callback_on_step_end_tensor_inputs, num_images_per_prompt)
        self._begin_call(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs,
                         denoising_end=denoising_end, denoising_start=denoising_start)
        batch = batch_size_of(prompt, prompt_embeds) * num_images_per_prompt
        check_generators(generator, batch)
        device = self._execution_device

        state = self._conditioning(device, num_images_per_prompt, prompt=prompt, prompt_2=prompt_2,
                                   negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
                                   prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                                   pooled_prompt_embeds=pooled_prompt_embeds,
                                   negative_pooled_prompt_embeds=negative_pooled_prompt_embeds)
        image = self.image_processor.preprocess(image)
        timesteps, num_inference_steps = self._schedule(num_inference_steps, timesteps, sigmas, strength,
                                                        denoising_start, device)
        check_steps_left(num_inference_steps, strength)
        start = timesteps[:1].repeat(batch)
        if latents is None:
            latents = self._initial_latents(image, start, batch, state["prompt_embeds"].dtype, device, generator,
                                            add_noise=denoising_start is None)
        self._refiner_time_ids(state, latents, batch, device, original_size, crops_coords_top_left, target_size,
                               aesthetic_score, negative_aesthetic_score, negative_original_size,
                               negative_crops_coords_top_left, negative_target_size)
        state["latents"] = latents
        timesteps, num_inference_steps = self._truncate(timesteps, num_inference_steps, denoising_end)
        latents = self._run(state, timesteps, num_inference_steps, generator, eta,
                            callback_on_step_end, callback_on_step_end_tensor_inputs, batch, device)
        return self._finish(latents, output_type, return_dict)


class StableDiffusionXLInpaintPipeline(_XLImageBase):
    """SDXL inpainting (4-channel base UNets by latent blending, 9-channel inpainting UNets by input channels)."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "mask",
                               "masked_image_latents"]

    def _scaled_latents(self, images, generator):
        return self.vae.config.scaling_factor * self._encode_image_latents(images, generator, upcast=True)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image=None,
        mask_image=None,
        masked_image_latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        padding_mask_crop: int | None = None,
        strength: float = 0.9999,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
    ):
        default_height, default_width = self._default_size()
        height, width = height or default_height, width or default_width
        check_strength(strength)
        check_size(height, width, self.vae_scale_factor)
        check_denoising_window(denoising_start, denoising_end)
        check_inpaint_inputs(image, mask_image, padding_mask_crop, output_type)
        self._check_common(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds,
                           negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
                           callback_on_step_end_tensor_inputs, num_images_per_prompt)
        self._begin_call(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs,
                         denoising_end=denoising_end, denoising_start=denoising_start)
        batch = batch_size_of(prompt, prompt_embeds) * num_images_per_prompt
        check_generators(generator, batch)
        device = self._execution_device

        state = self._conditioning(device, num_images_per_prompt, prompt=prompt, prompt_2=prompt_2,
                                   negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
                                   prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                                   pooled_prompt_embeds=pooled_prompt_embeds,
                                   negative_pooled_prompt_embeds=negative_pooled_prompt_embeds)
        dtype = state["prompt_embeds"].dtype
        timesteps, num_inference_steps = self._schedule(num_inference_steps, timesteps, sigmas, strength,
                                                        denoising_start, device)
        check_steps_left(num_inference_steps, strength)
        start = timesteps[:1].repeat(batch)
        full_strength = strength == 1.0

        crop, resize_mode = inpaint_crop(self.mask_processor, mask_image, width, height, padding_mask_crop)
        original_image = image
        init_image = self.image_processor.preprocess(image, height=height, width=width, crops_coords=crop,
                                                     resize_mode=resize_mode).to(dtype=torch.float32)
        mask = self.mask_processor.preprocess(mask_image, height=height, width=width, resize_mode=resize_mode,
                                              crops_coords=crop)
        latent_channels = self.vae.config.latent_channels
        if masked_image_latents is not None:
            masked = masked_image_latents
        elif init_image.shape[1] == latent_channels:
            masked = None
        else:
            masked = init_image * (mask < 0.5)
        unet_channels = self.unet.config.in_channels
        blend = unet_channels == latent_channels
        add_noise = denoising_start is None

        shape = (batch, latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        image_latents = None
        if init_image.shape[1] == latent_channels:
            image_latents = init_image.to(device=device, dtype=dtype)
            image_latents = image_latents.repeat(batch // image_latents.shape[0], 1, 1, 1)
        elif blend or (latents is None and not full_strength):
            image_latents = self._scaled_latents(init_image.to(device=device, dtype=dtype), generator)
            image_latents = image_latents.repeat(batch // image_latents.shape[0], 1, 1, 1)
        if latents is None and add_noise:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            latents = noise * self.scheduler.init_noise_sigma if full_strength else \
                self.scheduler.add_noise(image_latents, noise, start)
        elif add_noise:
            noise = latents.to(device)
            latents = noise * self.scheduler.init_noise_sigma
        else:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            latents = image_latents.to(device)

        mask = torch.nn.functional.interpolate(mask, size=(height // self.vae_scale_factor,
                                                           width // self.vae_scale_factor))
        mask = repeat_to_batch(mask.to(device=device, dtype=dtype), batch, "mask_image")
        if self.do_classifier_free_guidance:
            mask = torch.cat([mask] * 2)
        masked_latents = None
        if masked is not None:
            masked_latents = masked if masked.shape[1] == latent_channels else \
                self._scaled_latents(masked.to(device=device, dtype=dtype), generator)
            masked_latents = repeat_to_batch(masked_latents, batch, "image")
            if self.do_classifier_free_guidance:
                masked_latents = torch.cat([masked_latents] * 2)
            masked_latents = masked_latents.to(device=device, dtype=dtype)
        if not blend:
            extra = mask.shape[1] + (masked_latents.shape[1] if masked_latents is not None else 0)
            if latent_channels + extra != unet_channels:
                raise ValueError(
                    f"the unet takes {unet_channels} input channels but latents ({latent_channels}) + mask and "
                    f"masked image latents ({extra}) give {latent_channels + extra}; use a 4- or 9-channel unet"
                )

        self._refiner_time_ids(state, latents, batch, device, original_size, crops_coords_top_left, target_size,
                               aesthetic_score, negative_aesthetic_score, negative_original_size,
                               negative_crops_coords_top_left, negative_target_size)
        state.update(latents=latents, mask=mask, masked_image_latents=masked_latents)
        guided = self.do_classifier_free_guidance
        timesteps, num_inference_steps = self._truncate(timesteps, num_inference_steps, denoising_end)

        def paste_original(i, latents, state):
            init_mask = state["mask"].chunk(2)[0] if guided else state["mask"]
            proper = image_latents
            if i < len(timesteps) - 1:
                proper = self.scheduler.add_noise(proper, noise, timesteps[i + 1:i + 2])
            return (1 - init_mask) * proper + init_mask * latents

        latents = self._run(
            state, timesteps, num_inference_steps, generator, eta,
            callback_on_step_end, callback_on_step_end_tensor_inputs, batch, device,
            extra_channels=None if blend else (lambda s: [s["mask"], s["masked_image_latents"]]),
            after_step=paste_original if blend else None,
        )
        overlay = None
        if padding_mask_crop is not None:
            def overlay(im):
                return self.image_processor.apply_overlay(mask_image, original_image, im, crop)
        return self._finish(latents, output_type, return_dict, overlay=overlay)
