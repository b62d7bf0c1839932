"""Stable Diffusion 1.x / 2.x: text-to-image, image-to-image (SDEdit) and inpainting.

Each class is Diffusers' signature over the kernel's one generation path: ``__call__`` hands its
arguments to :meth:`kernel.tasks.TaskMixin._generate`; this module supplies the CLIP conditioning.

Safety checker and feature extractor components are accepted (``None`` included, with
``requires_safety_checker=False``) so Diffusers folders load and save unchanged, but no safety
checker model is run: ``nsfw_content_detected`` is always ``None``.  ``image_encoder``
is IP-Adapter's (``kernel_ip_adapter.IPAdapterMixin``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import torch

from kernel.engine import Conditioning
from kernel_clip import encode_prompt as clip_encode_prompt

from kernel_sd.base import StableDiffusionBase, check_prompts
from kernel_sd.outputs import StableDiffusionPipelineOutput


class _StableDiffusionCommon(StableDiffusionBase):
    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]
    _exclude_from_cpu_offload = ["safety_checker"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                 image_encoder=None, requires_safety_checker: bool = True) -> None:
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

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        self._prepare_size(call, self._default_size())
        check_prompts(call)

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        pos, neg = self.encode_prompt(call.prompt, call.device, call.num_images_per_prompt, negative,
                                      call.negative_prompt, call.prompt_embeds, call.negative_prompt_embeds,
                                      self._lora_scale(), call.clip_skip)
        return Conditioning({"prompt_embeds": pos}, {"prompt_embeds": neg} if negative else None)

    def _output(self, images: Any, call: SimpleNamespace):
        self._warn_unused_safety_checker()
        if not call.return_dict:
            return images, None
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=None)


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
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
    ):
        return self._generate(locals())


class StableDiffusionImg2ImgPipeline(_StableDiffusionCommon):
    """Image-to-image (SDEdit, Meng et al. 2021): noise the input's latents to ``strength`` and denoise."""

    _task = "image2image"

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
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
    ):
        return self._generate(locals())


class StableDiffusionInpaintPipeline(_StableDiffusionCommon):
    """Inpainting: repaint where ``mask_image`` is white.

    A 9-channel UNet (an inpainting checkpoint) sees the mask and the masked image's latents as
    extra input channels; a 4-channel UNet is steered by pasting the noised original latents back
    outside the mask after every step.
    """

    _task = "inpainting"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents"]

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
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
    ):
        return self._generate(locals())
