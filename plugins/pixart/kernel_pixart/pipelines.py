"""PixArt-alpha and PixArt-Sigma text-to-image pipelines.

T5 captions (masked, lower-cased; at most 120 tokens for alpha, 300 for Sigma by default) condition
the transformer through cross-attention; classifier-free guidance runs the negative and positive
prompts as one batch.  With ``use_resolution_binning`` a request is generated at the nearest
trained aspect-ratio bucket (:mod:`kernel_pixart.aspect_ratios`) and resized/cropped back.  The
1024px PixArt-alpha models also take the (binned) resolution and aspect ratio as conditions.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from kernel.image_processor import VaeImageProcessor
from kernel.outputs import BaseOutput
from kernel.scheduling import randn_tensor
from kernel_dit_common import (
    TransformerPipeline,
    check_generators,
    check_output_type,
    check_prompts,
    check_size,
    effective_batch,
    retrieve_timesteps,
)
from kernel_t5 import check_max_sequence_length, encode_prompt_with_mask

from kernel_pixart.aspect_ratios import BINS_BY_SAMPLE_SIZE, closest_bin, resize_and_crop


@dataclass
class ImagePipelineOutput(BaseOutput):
    """``images``: a list of PIL images, an ``(N, H, W, 3)`` array, a tensor, or latents."""

    images: Any


class PixArtAlphaPipeline(TransformerPipeline):
    """PixArt-alpha text-to-image (Diffusers' arguments, defaults and numbers)."""

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["tokenizer", "text_encoder"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "prompt_attention_mask"]
    _default_max_sequence_length = 120

    def __init__(self, tokenizer, text_encoder, vae, transformer, scheduler):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                              scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    def encode_prompt(self, prompt, do_classifier_free_guidance: bool = True, negative_prompt="",
                      num_images_per_prompt: int = 1, device=None, prompt_embeds=None, negative_prompt_embeds=None,
                      prompt_attention_mask=None, negative_prompt_attention_mask=None, clean_caption: bool = False,
                      max_sequence_length: int = 120, **kwargs):
        """``(prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask)``.

        ``clean_caption`` (the reference's bs4/ftfy caption scrubbing) is not implemented; captions are
        lower-cased and stripped, which is what the reference does when those packages are absent.
        """
        dtype = self.transformer.dtype if self.transformer is not None else None
        return encode_prompt_with_mask(
            self.tokenizer, self.text_encoder, prompt, do_classifier_free_guidance, negative_prompt,
            num_images_per_prompt, device or self._execution_device, prompt_embeds, negative_prompt_embeds,
            prompt_attention_mask, negative_prompt_attention_mask, max_sequence_length, dtype=dtype)

    def _bins(self):
        size = self.transformer.config.sample_size
        if size not in BINS_BY_SAMPLE_SIZE:
            raise ValueError(f"use_resolution_binning=True needs a transformer sample_size in "
                             f"{sorted(BINS_BY_SAMPLE_SIZE)}, got {size}; pass use_resolution_binning=False")
        return BINS_BY_SAMPLE_SIZE[size]

    def _size_conditions(self, height, width, batch, dtype, device, cfg):
        if not self.transformer.config.sample_size == 128:
            return {"resolution": None, "aspect_ratio": None}
        resolution = torch.tensor([height, width]).repeat(batch, 1).to(dtype=dtype, device=device)
        aspect = torch.tensor([float(height / width)]).repeat(batch, 1).to(dtype=dtype, device=device)
        if cfg:
            resolution, aspect = torch.cat([resolution] * 2), torch.cat([aspect] * 2)
        return {"resolution": resolution, "aspect_ratio": aspect}

    @torch.no_grad()
    def __call__(self, prompt=None, negative_prompt: str = "", num_inference_steps: int = 20, timesteps=None,
                 sigmas=None, guidance_scale: float = 4.5, num_images_per_prompt: int = 1, height: int | None = None,
                 width: int | None = None, eta: float = 0.0, generator=None, latents=None, prompt_embeds=None,
                 prompt_attention_mask=None, negative_prompt_embeds=None, negative_prompt_attention_mask=None,
                 output_type: str = "pil", return_dict: bool = True, callback=None, callback_steps: int = 1,
                 clean_caption: bool = True, use_resolution_binning: bool = True, max_sequence_length: int | None = None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",), **kwargs):
        unknown = [k for k in kwargs if k != "mask_feature"]
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected arguments {unknown}")
        max_sequence_length = max_sequence_length or self._default_max_sequence_length
        height = height or self.transformer.config.sample_size * self.vae_scale_factor
        width = width or self.transformer.config.sample_size * self.vae_scale_factor
        orig_height, orig_width = height, width
        if use_resolution_binning:
            height, width = closest_bin(height, width, self._bins())
        check_size(height, width, self.vae_scale_factor * self.transformer.config.patch_size,
                   f"VAE factor {self.vae_scale_factor} x patch size {self.transformer.config.patch_size}")
        if not isinstance(callback_steps, int) or callback_steps <= 0:
            raise ValueError(f"callback_steps must be a positive int, got {callback_steps!r}")
        check_prompts({"prompt": prompt}, prompt_embeds, {"negative_prompt": negative_prompt or None},
                      negative_prompt_embeds)
        if prompt_embeds is not None and prompt_attention_mask is None:
            raise ValueError("prompt_embeds needs prompt_attention_mask (the T5 padding mask) alongside it")
        if negative_prompt_embeds is not None and negative_prompt_attention_mask is None:
            raise ValueError("negative_prompt_embeds needs negative_prompt_attention_mask alongside it")
        if prompt_attention_mask is not None and negative_prompt_attention_mask is not None and \
                prompt_attention_mask.shape != negative_prompt_attention_mask.shape:
            raise ValueError("prompt_attention_mask and negative_prompt_attention_mask must have the same shape")
        check_max_sequence_length(max_sequence_length)
        check_output_type(output_type)
        names = self._callback_names(callback_on_step_end, list(callback_on_step_end_tensor_inputs))

        self._guidance_scale = guidance_scale
        cfg = guidance_scale > 1.0
        device = self._execution_device
        batch = effective_batch(prompt, prompt_embeds, num_images_per_prompt)
        check_generators(generator, batch)
        embeds, mask, neg, neg_mask = self.encode_prompt(
            prompt, cfg, negative_prompt, num_images_per_prompt, device, prompt_embeds, negative_prompt_embeds,
            prompt_attention_mask, negative_prompt_attention_mask, clean_caption, max_sequence_length)
        if cfg:
            embeds, mask = torch.cat([neg, embeds]), torch.cat([neg_mask, mask])
        timesteps, steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        channels = self.transformer.config.in_channels
        shape = (batch, channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=embeds.dtype)
            latents = latents * self.scheduler.init_noise_sigma
        else:
            latents = latents.to(device)
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        step_kwargs = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in accepted}
        sizes = self._size_conditions(height, width, batch, embeds.dtype, device, cfg)
        learned_sigma = self.transformer.config.out_channels // 2 == channels
        state = {"prompt_embeds": embeds, "prompt_attention_mask": mask}

        def predict(x, t):
            model_input = torch.cat([x] * 2) if cfg else x
            model_input = self.scheduler.scale_model_input(model_input, t)
            timestep = t if torch.is_tensor(t) else torch.tensor([t], device=device)
            timestep = (timestep[None] if timestep.ndim == 0 else timestep).to(model_input.device)
            out = self.transformer(model_input, encoder_hidden_states=state["prompt_embeds"],
                                   encoder_attention_mask=state["prompt_attention_mask"],
                                   timestep=timestep.expand(model_input.shape[0]), added_cond_kwargs=sizes,
                                   return_dict=False)[0]
            if cfg:
                uncond, cond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            return out.chunk(2, dim=1)[0] if learned_sigma else out

        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        latents = self.denoise(latents, timesteps, steps, predict, state, callback_on_step_end, names,
                               step_kwargs=step_kwargs, output_index=1 if steps == 1 else 0,
                               legacy_callback=callback, callback_steps=callback_steps)
        if output_type == "latent":
            images = latents
        else:
            images = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
            if use_resolution_binning:
                images = resize_and_crop(images, orig_width, orig_height)
            images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


class PixArtSigmaPipeline(PixArtAlphaPipeline):
    """PixArt-Sigma text-to-image: 300-token captions, bins up to 2048px, no size conditioning."""

    _default_max_sequence_length = 300

    def _size_conditions(self, height, width, batch, dtype, device, cfg):
        return {"resolution": None, "aspect_ratio": None}
