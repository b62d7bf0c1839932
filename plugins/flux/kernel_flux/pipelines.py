"""Flux.1 pipelines: text-to-image, image-to-image and inpainting.

Latents ``(B, C, H/8, W/8)`` are packed into 2x2 patch tokens (:func:`pack_latents`) with
(0, row, col) position ids.  The sigma schedule is ``linspace(1, 1/n, n)`` shifted by the
resolution-dependent ``mu`` (:func:`kernel_sched_flow_match.calculate_shift`).  Flux-dev was
distilled from guided predictions and takes the guidance strength as an input
(``guidance_scale``, embedded); schnell has no such input.  ``true_cfg_scale`` > 1 with a negative
prompt adds real classifier-free guidance (two separate passes, :class:`TrueClassifierFreeGuidance`).
The loop and the tasks are the kernel's; inpainting pastes the re-noised known tokens back after
every step (the 16-channel transformer has no mask input).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from kernel.engine import Conditioning
from kernel_autoencoders.image_processor import VaeImageProcessor
from kernel.outputs import BaseOutput
from kernel.pipeline import DiffusionPipeline
from kernel.pipeline_utils import check_output_type, check_pooled, check_prompts, check_size, retrieve_timesteps
from kernel.tasks import NoGuidance
from kernel_ip_adapter import FluxIPAdapterMixin
from kernel_lora import FluxLoraLoaderMixin
from kernel_sched_flow_match import calculate_shift
from kernel_t5 import as_prompt_list, check_max_sequence_length, repeat_per_prompt, t5_prompt_embeds

logger = logging.getLogger(__name__)

DEFAULT_GUIDANCE = 3.5


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, (H/2)(W/2), 4C)``: each token one 2x2 patch, channels ordered ``(c, dy, dx)``.
    Already packed (3-d) latents are returned as they are."""
    if latents.ndim == 3:
        return latents
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


class FluxPipeline(FluxLoraLoaderMixin, FluxIPAdapterMixin, DiffusionPipeline):
    """Text-to-image with Flux.1 (Diffusers' arguments, defaults and numbers)."""

    pipeline_family = "flux"
    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->transformer->vae"
    _optional_components = ["image_encoder", "feature_extractor"]
    _callback_tensor_inputs = ["latents", "prompt_embeds"]
    _floor_kept_steps = False
    #: Flux-dev's embedded guidance when ``guidance_scale`` is not given (Diffusers' per-task defaults).
    _default_embedded_guidance = DEFAULT_GUIDANCE

    def __init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                 image_encoder=None, feature_extractor=None):
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, transformer=transformer, scheduler=scheduler,
                              image_encoder=image_encoder, feature_extractor=feature_extractor)
        self.vae_scale_factor = vae.spatial_compression_ratio if vae is not None else 8
        self.latent_channels = vae.config.latent_channels if vae is not None else 16
        # Packing halves the latent grid again, so images must divide by twice the VAE factor.  A tensor
        # with the VAE's latent channel count is taken as latents and not encoded again.
        factor = self.vae_scale_factor * 2
        self.image_processor = VaeImageProcessor(vae_scale_factor=factor, vae_latent_channels=self.latent_channels)
        self.mask_processor = VaeImageProcessor.for_masks(factor, vae_latent_channels=self.latent_channels)
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
        return prompt_embeds, pooled_prompt_embeds, self._text_ids(prompt_embeds.shape[1], device)

    def _text_ids(self, length: int, device) -> torch.Tensor:
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.transformer.dtype
        return torch.zeros(length, 3).to(device=device, dtype=dtype)

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        default = self.default_sample_size * self.vae_scale_factor
        call.height, call.width = call.height or default, call.width or default
        check_size(call.height, call.width, self.vae_scale_factor * 2,
                   f"VAE factor {self.vae_scale_factor} x 2 for the packed 2x2 latent patches")
        check_prompts({"prompt": call.prompt, "prompt_2": call.prompt_2}, call.prompt_embeds,
                      {"negative_prompt": call.negative_prompt, "negative_prompt_2": call.negative_prompt_2},
                      call.negative_prompt_embeds)
        check_pooled(call.prompt_embeds, call.pooled_prompt_embeds, call.negative_prompt_embeds,
                     call.negative_pooled_prompt_embeds, self.transformer.config.pooled_projection_dim)
        check_max_sequence_length(call.max_sequence_length)
        check_output_type(call.output_type)
        if call.guidance_scale is not None and not self.transformer.config.guidance_embeds:
            logger.warning("guidance_scale=%s is ignored: this Flux transformer has no guidance embedding "
                           "(guidance_embeds=False, e.g. FLUX.1-schnell); use true_cfg_scale with a "
                           "negative_prompt for classifier-free guidance", call.guidance_scale)
        if call.guidance_scale is None:
            call.guidance_scale = self._default_embedded_guidance
        self._guidance_scale = call.guidance_scale
        call.joint_attention_kwargs = call.joint_attention_kwargs or {}

    def _default_guider(self, call: SimpleNamespace):
        """True classifier-free guidance when ``true_cfg_scale > 1`` and a negative prompt is given."""
        has_negative = call.negative_prompt is not None or (
            call.negative_prompt_embeds is not None and call.negative_pooled_prompt_embeds is not None)
        if call.true_cfg_scale > 1 and has_negative:
            from kernel.registry import get_registry

            return get_registry().resolve("TrueClassifierFreeGuidance")(guidance_scale=call.true_cfg_scale)
        return NoGuidance()

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        pos = self.encode_prompt(call.prompt, call.prompt_2, call.device, call.num_images_per_prompt,
                                 call.prompt_embeds, call.pooled_prompt_embeds, call.max_sequence_length)
        call.text_ids = {pos[0].shape[1]: pos[2]}  # by text length: built once, not every step
        neg = None
        if negative:
            neg = self.encode_prompt(call.negative_prompt, call.negative_prompt_2, call.device,
                                     call.num_images_per_prompt, call.negative_prompt_embeds,
                                     call.negative_pooled_prompt_embeds, call.max_sequence_length)
            call.text_ids.setdefault(neg[0].shape[1], neg[2])
            neg = {"prompt_embeds": neg[0], "pooled_prompt_embeds": neg[1]}
        return Conditioning({"prompt_embeds": pos[0], "pooled_prompt_embeds": pos[1]}, neg)

    def _latent_grid(self, height, width):
        return 2 * (int(height) // (self.vae_scale_factor * 2)), 2 * (int(width) // (self.vae_scale_factor * 2))

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        return (call.batch, self.transformer.config.in_channels // 4, *self._latent_grid(call.height, call.width))

    def _denoiser_channels(self) -> int:
        return self.transformer.config.in_channels // 4

    def _pack_latents(self, latents: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        return pack_latents(latents)

    def _unpack_latents(self, latents: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        return unpack_latents(latents, call.height, call.width, self.vae_scale_factor)

    def _pack_mask(self, mask: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        return pack_latents(mask.repeat(1, self.transformer.config.in_channels // 4, 1, 1))

    def _retrieve_timesteps(self, call: SimpleNamespace):
        """Sigmas ``linspace(1, 1/n, n)`` shifted for the number of packed tokens (``mu``)."""
        steps, sigmas = call.num_inference_steps, call.sigmas
        if sigmas is None:
            sigmas = np.linspace(1.0, 1 / steps, steps)
        if getattr(self.scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        rows, cols = self._latent_grid(call.height, call.width)
        cfg = self.scheduler.config
        mu = calculate_shift((rows // 2) * (cols // 2), cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        return retrieve_timesteps(self.scheduler, steps, call.device, sigmas=sigmas, mu=mu)

    def _late_conditioning(self, call: SimpleNamespace, cond: Conditioning, latents: torch.Tensor) -> None:
        rows, cols = self._latent_grid(call.height, call.width)
        call.img_ids = latent_image_ids(rows // 2, cols // 2, call.device, call.dtype)
        call.guidance = None
        if self.transformer.config.guidance_embeds:
            call.guidance = torch.full([1], call.guidance_scale, device=call.device, dtype=torch.float32)

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        rows = model_input.shape[0]
        guidance = None if self._call.guidance is None else self._call.guidance.expand(rows)
        text_ids = self._call.text_ids[cond["prompt_embeds"].shape[1]]
        return self.transformer(hidden_states=model_input, timestep=timestep.expand(rows).to(model_input.dtype) / 1000,
                                guidance=guidance, pooled_projections=cond["pooled_prompt_embeds"],
                                encoder_hidden_states=cond["prompt_embeds"], txt_ids=text_ids,
                                img_ids=self._call.img_ids, joint_attention_kwargs=self.joint_attention_kwargs,
                                return_dict=False, **kwargs)[0]

    def _output(self, images: Any, call: SimpleNamespace):
        return FluxPipelineOutput(images=images) if call.return_dict else (images,)

    @torch.no_grad()
    def __call__(self, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None,
                 true_cfg_scale: float = 1.0, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 28, sigmas=None, guidance_scale: float | None = None,
                 num_images_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                 pooled_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                 negative_ip_adapter_image=None, negative_ip_adapter_image_embeds=None, negative_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None,
                 output_type: str = "pil", return_dict: bool = True, joint_attention_kwargs=None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 max_sequence_length: int = 512):
        """``guidance_scale`` (default 3.5) is the embedded guidance of Flux-dev; schnell ignores it (with a warning
        when given)."""
        return self._generate(locals())


class FluxImg2ImgPipeline(FluxPipeline):
    """Image-to-image with Flux.1: ``image`` noised to ``strength``, then denoised under the prompt."""

    _task = "image2image"
    _default_embedded_guidance = 7.0

    @torch.no_grad()
    def __call__(self, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None,
                 true_cfg_scale: float = 1.0, image=None, height: int | None = None, width: int | None = None,
                 strength: float = 0.6, num_inference_steps: int = 28, sigmas=None,
                 guidance_scale: float | None = None, num_images_per_prompt: int = 1, generator=None, latents=None,
                 prompt_embeds=None, pooled_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                 negative_ip_adapter_image=None, negative_ip_adapter_image_embeds=None, negative_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                 joint_attention_kwargs=None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), max_sequence_length: int = 512):
        """``guidance_scale`` defaults to 7.0 for Flux-dev, as in Diffusers' image-to-image pipeline."""
        return self._generate(locals())


class FluxInpaintPipeline(FluxPipeline):
    """Inpainting with Flux.1 (Diffusers' ``FluxInpaintPipeline`` arguments, defaults and numbers).

    White (>= 0.5) pixels of ``mask_image`` are repainted, black ones kept.  ``strength`` sets how far
    the image is noised first (1.0: pure noise inside the mask).  ``latents``, when given, are the
    starting noise ``(B, C, H/8, W/8)`` (or already packed).  ``masked_image_latents`` is accepted for
    Diffusers compatibility; the 16-channel transformer has no input for it.
    """

    _task = "inpainting"
    _default_embedded_guidance = 7.0

    @torch.no_grad()
    def __call__(self, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None,
                 true_cfg_scale: float = 1.0, image=None, mask_image=None, masked_image_latents=None,
                 height: int | None = None, width: int | None = None, padding_mask_crop: int | None = None,
                 strength: float = 0.6, num_inference_steps: int = 28, sigmas=None,
                 guidance_scale: float | None = None, num_images_per_prompt: int = 1, generator=None, latents=None,
                 prompt_embeds=None, pooled_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                 negative_ip_adapter_image=None, negative_ip_adapter_image_embeds=None, negative_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                 joint_attention_kwargs=None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), max_sequence_length: int = 512):
        return self._generate(locals())
