"""Flux.1 pipelines: text-to-image and image-to-image (inpainting: :mod:`kernel_flux.inpaint`).

Latents ``(B, C, H/8, W/8)`` are packed into 2x2 patch tokens (:func:`pack_latents`) with
(0, row, col) position ids.  The sigma schedule is ``linspace(1, 1/n, n)`` shifted by the
resolution-dependent ``mu`` (:func:`kernel_sched_flow_match.calculate_shift`).  Flux-dev was
distilled from guided predictions and takes the guidance strength as an input
(``guidance_scale``, embedded); schnell has no such input.  ``true_cfg_scale`` > 1 with a negative
prompt adds real classifier-free guidance (two passes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kernel.image_processor import VaeImageProcessor
from kernel.outputs import BaseOutput
from kernel.scheduling import randn_tensor
from kernel_dit_common import (
    TransformerPipeline,
    check_generators,
    check_output_type,
    check_pooled,
    check_prompts,
    check_size,
    check_steps_left,
    check_strength,
    effective_batch,
    repeat_to_batch,
    retrieve_timesteps,
    sample_latents,
    strength_timesteps,
    to_model_latents,
)
from kernel_sched_flow_match import calculate_shift
from kernel_t5 import as_prompt_list, check_max_sequence_length, repeat_per_prompt, t5_prompt_embeds

logger = logging.getLogger(__name__)

DEFAULT_GUIDANCE = 3.5


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, (H/2)(W/2), 4C)``: each token one 2x2 patch, channels ordered ``(c, dy, dx)``."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int, vae_scale_factor: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for an image of ``height x width`` pixels."""
    b, _, channels = tokens.shape
    h = 2 * (int(height) // (vae_scale_factor * 2))
    w = 2 * (int(width) // (vae_scale_factor * 2))
    x = tokens.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, h, w)


def latent_image_ids(rows: int, cols: int, device=None, dtype=None) -> torch.Tensor:
    """``(rows*cols, 3)`` ids ``(0, row, col)`` for packed image tokens."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)


@dataclass
class FluxPipelineOutput(BaseOutput):
    """``images``: a list of PIL images, an ``(N, H, W, 3)`` array, a tensor, or packed latents."""

    images: Any


class FluxPipeline(TransformerPipeline):
    """Text-to-image with Flux.1 (Diffusers' arguments, defaults and numbers)."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->transformer->vae"
    _optional_components = ["image_encoder", "feature_extractor"]
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                 image_encoder=None, feature_extractor=None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, transformer=transformer, scheduler=scheduler,
                              image_encoder=image_encoder, feature_extractor=feature_extractor)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        # Packing halves the latent grid again, so images must divide by twice the VAE factor.
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor * 2)
        self.latent_channels = vae.config.latent_channels if vae is not None else 16
        self.tokenizer_max_length = tokenizer.model_max_length if tokenizer is not None else 77
        self.default_sample_size = 128

    # ---------------------------------------------------------------- prompts
    def _clip_pooled(self, prompts: list[str], device, num_images_per_prompt: int) -> torch.Tensor:
        if self.tokenizer is None or self.text_encoder is None:
            raise ValueError("Flux needs the CLIP tokenizer and text_encoder for prompts; pass pooled_prompt_embeds")
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer_max_length, truncation=True,
                             return_tensors="pt").input_ids
        pooled = self.text_encoder(ids.to(device), output_hidden_states=False).pooler_output
        return repeat_per_prompt(pooled.to(dtype=self.text_encoder.dtype, device=device), num_images_per_prompt)

    def encode_prompt(self, prompt, prompt_2=None, device=None, num_images_per_prompt: int = 1, prompt_embeds=None,
                      pooled_prompt_embeds=None, max_sequence_length: int = 512, lora_scale=None):
        """``(prompt_embeds (B*n, L, D_t5), pooled_prompt_embeds (B*n, P), text_ids (L, 3))``."""
        device = device or self._execution_device
        if prompt_embeds is None:
            prompts = as_prompt_list(prompt)
            pooled_prompt_embeds = self._clip_pooled(prompts, device, num_images_per_prompt)
            prompt_embeds = t5_prompt_embeds(self.tokenizer_2, self.text_encoder_2,
                                             as_prompt_list(prompt_2 or prompt, "prompt_2"), max_sequence_length,
                                             num_images_per_prompt, device, warn_cut=self.tokenizer_max_length)
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.transformer.dtype
        text_ids = torch.zeros(prompt_embeds.shape[1], 3).to(device=device, dtype=dtype)
        return prompt_embeds, pooled_prompt_embeds, text_ids

    # ---------------------------------------------------------------- shared steps
    def _check(self, prompt, prompt_2, negative_prompt, negative_prompt_2, height, width, prompt_embeds,
               pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds, max_sequence_length,
               callback, names, output_type, guidance_scale):
        check_size(height, width, self.vae_scale_factor * 2,
                   f"VAE factor {self.vae_scale_factor} x 2 for the packed 2x2 latent patches")
        check_prompts({"prompt": prompt, "prompt_2": prompt_2}, prompt_embeds,
                      {"negative_prompt": negative_prompt, "negative_prompt_2": negative_prompt_2},
                      negative_prompt_embeds)
        check_pooled(prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds,
                     self.transformer.config.pooled_projection_dim)
        check_max_sequence_length(max_sequence_length)
        check_output_type(output_type)
        if guidance_scale is not None and not self.transformer.config.guidance_embeds:
            logger.warning("guidance_scale=%s is ignored: this Flux transformer has no guidance embedding "
                           "(guidance_embeds=False, e.g. FLUX.1-schnell); use true_cfg_scale with a "
                           "negative_prompt for classifier-free guidance", guidance_scale)
        return self._callback_names(callback, names)

    def _conditioning(self, prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds, pooled_prompt_embeds,
                      negative_prompt_embeds, negative_pooled_prompt_embeds, num_images_per_prompt,
                      max_sequence_length, true_cfg_scale):
        device = self._execution_device
        has_negative = negative_prompt is not None or (negative_prompt_embeds is not None and
                                                       negative_pooled_prompt_embeds is not None)
        true_cfg = true_cfg_scale > 1 and has_negative
        pos = self.encode_prompt(prompt, prompt_2, device, num_images_per_prompt, prompt_embeds, pooled_prompt_embeds,
                                 max_sequence_length)
        neg = None
        if true_cfg:
            neg = self.encode_prompt(negative_prompt, negative_prompt_2, device, num_images_per_prompt,
                                     negative_prompt_embeds, negative_pooled_prompt_embeds, max_sequence_length)
        return pos, neg

    def _schedule(self, num_inference_steps, sigmas, seq_len, strength=None):
        """``(timesteps, steps)`` shifted for ``seq_len`` packed tokens; trimmed by ``strength`` when given (img2img)."""
        if sigmas is None:
            sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if getattr(self.scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        cfg = self.scheduler.config
        mu = calculate_shift(seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        timesteps, steps = retrieve_timesteps(self.scheduler, num_inference_steps, self._execution_device,
                                              sigmas=sigmas, mu=mu)
        if strength is not None:
            timesteps, steps = strength_timesteps(self.scheduler, steps, strength)
            check_steps_left(steps, strength)
        return timesteps, steps

    def _predictor(self, state, pos, neg, img_ids, guidance, true_cfg_scale):
        _, pooled, text_ids = pos

        def run(latents, timestep, embeds, pooled_embeds, ids):
            return self.transformer(hidden_states=latents, timestep=timestep / 1000, guidance=guidance,
                                    pooled_projections=pooled_embeds, encoder_hidden_states=embeds, txt_ids=ids,
                                    img_ids=img_ids, joint_attention_kwargs=self.joint_attention_kwargs,
                                    return_dict=False)[0]

        def predict(latents, t):
            timestep = t.expand(latents.shape[0]).to(latents.dtype)
            out = run(latents, timestep, state["prompt_embeds"], pooled, text_ids)
            if neg is not None:
                uncond = run(latents, timestep, neg[0], neg[1], neg[2])
                out = uncond + true_cfg_scale * (out - uncond)
            return out
        return predict

    def _guidance(self, guidance_scale, batch, device):
        if not self.transformer.config.guidance_embeds:
            return None
        scale = DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale
        return torch.full([1], scale, device=device, dtype=torch.float32).expand(batch)

    def _decode_packed(self, latents, height, width, output_type):
        if output_type == "latent":
            return latents
        return self.decode(unpack_latents(latents, height, width, self.vae_scale_factor), output_type)

    def _finish(self, images, return_dict):
        self.maybe_free_model_hooks()
        return FluxPipelineOutput(images=images) if return_dict else (images,)

    def _latent_grid(self, height, width):
        return 2 * (int(height) // (self.vae_scale_factor * 2)), 2 * (int(width) // (self.vae_scale_factor * 2))

    @torch.no_grad()
    def __call__(self, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None,
                 true_cfg_scale: float = 1.0, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 28, sigmas=None, guidance_scale: float | None = None,
                 num_images_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                 pooled_prompt_embeds=None, negative_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                 output_type: str = "pil", return_dict: bool = True, joint_attention_kwargs=None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 max_sequence_length: int = 512):
        """``guidance_scale`` (default 3.5) is the embedded guidance of Flux-dev; schnell ignores it (with a warning
        when given)."""
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        names = self._check(prompt, prompt_2, negative_prompt, negative_prompt_2, height, width, prompt_embeds,
                            pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds,
                            max_sequence_length, callback_on_step_end, list(callback_on_step_end_tensor_inputs),
                            output_type, guidance_scale)
        self._guidance_scale = DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale
        self._joint_attention_kwargs = joint_attention_kwargs or {}
        batch = effective_batch(prompt, prompt_embeds, num_images_per_prompt)
        check_generators(generator, batch)
        pos, neg = self._conditioning(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds,
                                      pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds,
                                      num_images_per_prompt, max_sequence_length, true_cfg_scale)
        device, dtype = self._execution_device, pos[0].dtype
        rows, cols = self._latent_grid(height, width)
        channels = self.transformer.config.in_channels // 4
        img_ids = latent_image_ids(rows // 2, cols // 2, device, dtype)
        if latents is None:
            latents = pack_latents(randn_tensor((batch, channels, rows, cols), generator=generator, device=device,
                                                dtype=dtype))
        else:
            latents = latents.to(device=device, dtype=dtype)
        timesteps, steps = self._schedule(num_inference_steps, sigmas, latents.shape[1])
        guidance = self._guidance(guidance_scale, latents.shape[0], device)
        state = {"prompt_embeds": pos[0]}
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        latents = self.denoise(latents, timesteps, steps,
                               self._predictor(state, pos, neg, img_ids, guidance, true_cfg_scale), state,
                               callback_on_step_end, names)
        return self._finish(self._decode_packed(latents, height, width, output_type), return_dict)


class FluxImg2ImgPipeline(FluxPipeline):
    """Image-to-image with Flux.1: ``image`` noised to ``strength``, then denoised under the prompt."""

    @torch.no_grad()
    def __call__(self, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None,
                 true_cfg_scale: float = 1.0, image=None, height: int | None = None, width: int | None = None,
                 strength: float = 0.6, num_inference_steps: int = 28, sigmas=None,
                 guidance_scale: float | None = None, num_images_per_prompt: int = 1, generator=None, latents=None,
                 prompt_embeds=None, pooled_prompt_embeds=None, negative_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                 joint_attention_kwargs=None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), max_sequence_length: int = 512):
        """``guidance_scale`` defaults to 7.0 for Flux-dev, as in Diffusers' image-to-image pipeline."""
        if image is None:
            raise ValueError("image is required for image-to-image (a PIL image, array, tensor or list of them)")
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        check_strength(strength)
        names = self._check(prompt, prompt_2, negative_prompt, negative_prompt_2, height, width, prompt_embeds,
                            pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds,
                            max_sequence_length, callback_on_step_end, list(callback_on_step_end_tensor_inputs),
                            output_type, guidance_scale)
        guidance_scale = 7.0 if guidance_scale is None else guidance_scale
        self._guidance_scale = guidance_scale
        self._joint_attention_kwargs = joint_attention_kwargs or {}
        pixels = self.image_processor.preprocess(image, height=height, width=width).to(torch.float32)
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
        if latents is None:
            pix = pixels.to(device=device, dtype=dtype)
            start = pix if pix.shape[1] == self.latent_channels else to_model_latents(
                self.vae, sample_latents(self.vae, pix, generator))
            start = repeat_to_batch(start, batch, "images")
            noise = randn_tensor((batch, channels, rows, cols), generator=generator, device=device, dtype=dtype)
            latents = pack_latents(self.scheduler.scale_noise(start, timesteps[:1].repeat(batch), noise))
        else:
            latents = latents.to(device=device, dtype=dtype)
        guidance = self._guidance(guidance_scale, latents.shape[0], device)
        state = {"prompt_embeds": pos[0]}
        latents = self.denoise(latents, timesteps, steps,
                               self._predictor(state, pos, neg, img_ids, guidance, true_cfg_scale), state,
                               callback_on_step_end, names)
        return self._finish(self._decode_packed(latents, height, width, output_type), return_dict)
