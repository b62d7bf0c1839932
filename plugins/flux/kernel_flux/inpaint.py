"""Flux.1 inpainting: repaint the white part of ``mask_image`` under the prompt, keep the rest.

The base (16-channel) Flux transformer has no mask input, so inpainting works by replacement
(Lugmayr et al., RePaint, arXiv:2201.09865, and SDEdit, arXiv:2108.01073): the image latents are
noised to ``strength`` as in image-to-image, and after every step the unmasked tokens are reset to
the image latents re-noised to the next sigma (the clean latents after the last step), so only the
masked region is generated.  The mask is binarised in pixel space and downsampled nearest-neighbour
to the latent grid, then packed like the latents (one value per 2x2 patch channel).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from kernel.image_processor import VaeImageProcessor
from kernel.scheduling import randn_tensor
from kernel_dit_common import (
    check_generators,
    check_strength,
    effective_batch,
    repeat_to_batch,
    sample_latents,
    to_model_latents,
)

from kernel_flux.pipelines import FluxPipeline, latent_image_ids, pack_latents

DEFAULT_INPAINT_GUIDANCE = 7.0


def _spatial_size(x: Any) -> tuple[int, int] | None:
    """``(H, W)`` of an image or mask input (PIL, ``[B,] [C,] H, W`` tensor, ``[B,] H, W [, C]`` array)."""
    if isinstance(x, (list, tuple)):
        return _spatial_size(x[0]) if len(x) else None
    if isinstance(x, PIL.Image.Image):
        return x.height, x.width
    if isinstance(x, torch.Tensor) and x.ndim >= 2:
        return tuple(x.shape[-2:])
    if isinstance(x, np.ndarray) and x.ndim >= 2:
        # Arrays keep channels last; a trailing 1/3/4 axis on a >= 3-d array is channels.
        return tuple(x.shape[-3:-1]) if x.ndim >= 3 and x.shape[-1] in (1, 3, 4) else tuple(x.shape[-2:])
    return None


class FluxInpaintPipeline(FluxPipeline):
    """Inpainting with Flux.1 (Diffusers' ``FluxInpaintPipeline`` arguments, defaults and numbers).

    White (>= 0.5) pixels of ``mask_image`` are repainted, black ones kept.  ``strength`` sets how far
    the image is noised first (1.0: pure noise inside the mask).
    """

    def __init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                 image_encoder=None, feature_extractor=None):
        super().__init__(scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                         image_encoder, feature_extractor)
        factor = self.vae_scale_factor * 2
        # A tensor with the VAE's latent channel count is taken as latents and not encoded again.
        self.image_processor = VaeImageProcessor(vae_scale_factor=factor, vae_latent_channels=self.latent_channels)
        self.mask_processor = VaeImageProcessor.for_masks(factor, vae_latent_channels=self.latent_channels)

    # ---------------------------------------------------------------- checks
    def _check_inpaint_inputs(self, image, mask_image, masked_image_latents, padding_mask_crop, output_type):
        if image is None or mask_image is None:
            raise ValueError("inpainting needs both image and mask_image (PIL images, arrays, tensors or lists)")
        if masked_image_latents is not None and not isinstance(masked_image_latents, torch.Tensor):
            raise TypeError(f"masked_image_latents must be a torch.Tensor, got {type(masked_image_latents).__name__}")
        is_latents = isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[1] == self.latent_channels
        image_size, mask_size = _spatial_size(image), _spatial_size(mask_image)
        if not is_latents and image_size is not None and mask_size is not None and image_size != mask_size:
            raise ValueError(f"mask_image is {mask_size[0]}x{mask_size[1]} (HxW) but image is "
                             f"{image_size[0]}x{image_size[1]}; pass a mask_image of the same size as image")
        if padding_mask_crop is None:
            return
        if isinstance(padding_mask_crop, bool) or not isinstance(padding_mask_crop, int) or padding_mask_crop < 0:
            raise ValueError(f"padding_mask_crop must be None or a non-negative int (pixels), "
                             f"got {padding_mask_crop!r}")
        for name, value in (("image", image), ("mask_image", mask_image)):
            if not isinstance(value, PIL.Image.Image):
                raise ValueError(f"padding_mask_crop needs {name} as one PIL image, got {type(value).__name__}")
        if output_type != "pil":
            raise ValueError(f"padding_mask_crop pastes the result back into the PIL image, so output_type must "
                             f"be 'pil', got {output_type!r}")

    # ---------------------------------------------------------------- latents
    def _image_latents(self, pixels, batch, generator, device, dtype):
        pix = pixels.to(device=device, dtype=dtype)
        latents = pix if pix.shape[1] == self.latent_channels else to_model_latents(
            self.vae, sample_latents(self.vae, pix, generator))
        if latents.shape[0] > batch:
            raise ValueError(f"got {latents.shape[0]} images for a batch of {batch} (prompts x "
                             "num_images_per_prompt); pass 1 image or a divisor of the batch")
        return repeat_to_batch(latents, batch, "images")

    def _latent_mask(self, mask_condition, batch, rows, cols, device, dtype):
        """Pixel mask ``(B, 1, H, W)`` -> packed ``(batch, tokens, 4C)``, nearest-neighbour on the latent grid."""
        mask = F.interpolate(mask_condition, size=(rows, cols)).to(device=device, dtype=dtype)
        if mask.shape[0] > batch:
            raise ValueError(f"got {mask.shape[0]} masks for a batch of {batch} (prompts x num_images_per_prompt); "
                             "pass 1 mask_image or a divisor of the batch")
        mask = repeat_to_batch(mask, batch, "masks")
        return pack_latents(mask.repeat(1, self.transformer.config.in_channels // 4, 1, 1))

    @torch.no_grad()
    def __call__(self, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None,
                 true_cfg_scale: float = 1.0, image=None, mask_image=None, masked_image_latents=None,
                 height: int | None = None, width: int | None = None, padding_mask_crop: int | None = None,
                 strength: float = 0.6, num_inference_steps: int = 28, sigmas=None,
                 guidance_scale: float | None = None, num_images_per_prompt: int = 1, generator=None, latents=None,
                 prompt_embeds=None, pooled_prompt_embeds=None, negative_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                 joint_attention_kwargs=None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), max_sequence_length: int = 512):
        """``guidance_scale`` defaults to 7.0 (Flux-dev's embedded guidance), as in Diffusers.

        ``latents``, when given, are the starting noise ``(B, C, H/8, W/8)`` (or already packed), used
        as the starting point as they are.  ``masked_image_latents`` is accepted for Diffusers
        compatibility; the 16-channel Flux transformer has no input for it, so it changes nothing.
        """
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        check_strength(strength)
        self._check_inpaint_inputs(image, mask_image, masked_image_latents, padding_mask_crop, output_type)
        names = self._check(prompt, prompt_2, negative_prompt, negative_prompt_2, height, width, prompt_embeds,
                            pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds,
                            max_sequence_length, callback_on_step_end, list(callback_on_step_end_tensor_inputs),
                            output_type, guidance_scale)
        guidance_scale = DEFAULT_INPAINT_GUIDANCE if guidance_scale is None else guidance_scale
        self._guidance_scale = guidance_scale
        self._joint_attention_kwargs = joint_attention_kwargs or {}

        crops, resize_mode = None, "default"
        if padding_mask_crop is not None:
            crops = self.mask_processor.get_crop_region(mask_image, width, height, pad=padding_mask_crop)
            resize_mode = "fill"
        pixels = self.image_processor.preprocess(image, height=height, width=width, crops_coords=crops,
                                                 resize_mode=resize_mode).to(torch.float32)
        batch = effective_batch(prompt, prompt_embeds, num_images_per_prompt)
        check_generators(generator, batch)
        pos, neg = self._conditioning(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds,
                                      pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds,
                                      num_images_per_prompt, max_sequence_length, true_cfg_scale)
        device, dtype = self._execution_device, pos[0].dtype
        rows, cols = self._latent_grid(height, width)
        timesteps, steps = self._schedule(num_inference_steps, sigmas, (rows // 2) * (cols // 2), strength)
        channels = self.transformer.config.in_channels // 4
        img_ids = latent_image_ids(rows // 2, cols // 2, device, dtype)
        # Encoded before the noise is drawn, so a shared generator gives Diffusers' noise.
        known = self._image_latents(pixels, batch, generator, device, dtype)
        if latents is None:
            noise = randn_tensor((batch, channels, rows, cols), generator=generator, device=device, dtype=dtype)
            noise, latents = pack_latents(noise), pack_latents(
                self.scheduler.scale_noise(known, timesteps[:1].repeat(batch), noise))
        else:
            latents = latents.to(device=device, dtype=dtype)
            shapes = ((batch, channels, rows, cols), (batch, (rows // 2) * (cols // 2), 4 * channels))
            if tuple(latents.shape) not in shapes:
                raise ValueError(f"latents must have shape {shapes[0]} (or packed, {shapes[1]}) for this batch "
                                 f"and size, got {tuple(latents.shape)}")
            noise = latents = pack_latents(latents) if latents.ndim == 4 else latents
        known = pack_latents(known)

        mask_condition = self.mask_processor.preprocess(mask_image, height=height, width=width,
                                                        resize_mode=resize_mode, crops_coords=crops)
        mask = self._latent_mask(mask_condition, batch, rows, cols, device, dtype)

        def blend(i, current):
            # Keep the known region on the forward-process path: the image at the next step's sigma.
            target = known
            if i < len(timesteps) - 1:
                target = self.scheduler.scale_noise(known, timesteps[i + 1:i + 2], noise)
            return (1 - mask) * target + mask * current

        guidance = self._guidance(guidance_scale, latents.shape[0], device)
        state = {"prompt_embeds": pos[0]}
        latents = self.denoise(latents, timesteps, steps,
                               self._predictor(state, pos, neg, img_ids, guidance, true_cfg_scale), state,
                               callback_on_step_end, names, blend=blend)
        images = self._decode_packed(latents, height, width, output_type)
        if padding_mask_crop is not None:
            images = [self.image_processor.apply_overlay(mask_image, image, im, crops) for im in images]
        return self._finish(images, return_dict)
