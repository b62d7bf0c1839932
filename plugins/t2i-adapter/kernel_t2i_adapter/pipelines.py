"""Diffusers' T2I-Adapter pipelines for SD 1.x/2.x and SDXL, as compositions: the family text-to-image
pipeline (its loop and guidance) plus :class:`kernel_t2i_adapter.mixin.T2IAdapterMixin`, with Diffusers'
constructor and call signatures (the legacy ``callback`` / ``callback_steps``, no ``callback_on_step_end``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import torch

from kernel.outputs import BaseOutput
from kernel_sd import StableDiffusionPipeline, StableDiffusionXLPipeline

from kernel_t2i_adapter.mixin import T2IAdapterMixin


@dataclass
class StableDiffusionAdapterPipelineOutput(BaseOutput):
    """``images``: PIL images, an ``[B, H, W, C]`` array or a tensor; ``nsfw_content_detected``: always ``None``
    (no safety checker is run)."""

    images: Any
    nsfw_content_detected: list[bool] | None = None


class StableDiffusionAdapterPipeline(T2IAdapterMixin, StableDiffusionPipeline):
    """SD 1.x/2.x text-to-image steered by T2I-Adapter control images."""

    model_cpu_offload_seq = "text_encoder->adapter->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor"]

    def __init__(self, vae, text_encoder, tokenizer, unet, adapter, scheduler, safety_checker=None,
                 feature_extractor=None, requires_safety_checker: bool = True) -> None:
        # The family's constructor, less its image_encoder: Diffusers' adapter pipeline has none, so a saved
        # model_index.json must not list one.
        self._normalise_scheduler_config(scheduler)
        if safety_checker is not None and feature_extractor is None:
            raise ValueError("safety_checker needs a feature_extractor; pass one, or safety_checker=None")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              safety_checker=safety_checker, feature_extractor=feature_extractor)
        self.register_to_config(requires_safety_checker=requires_safety_checker)
        self._setup_processors()
        self._set_adapter(adapter)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image=None,
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
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        adapter_conditioning_scale: float | list[float] = 1.0,
        clip_skip: int | None = None,
    ):
        return self._generate(locals())

    def _output(self, images: Any, call: SimpleNamespace):
        self._warn_unused_safety_checker()
        if not call.return_dict:
            return images, None
        return StableDiffusionAdapterPipelineOutput(images=images, nsfw_content_detected=None)


class StableDiffusionXLAdapterPipeline(T2IAdapterMixin, StableDiffusionXLPipeline):
    """SDXL text-to-image steered by T2I-Adapter control images; ``adapter_conditioning_factor`` stops the
    adapter after that fraction of the steps."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->adapter->unet->vae"

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, adapter, scheduler,
                 force_zeros_for_empty_prompt: bool = True, feature_extractor=None, image_encoder=None) -> None:
        super().__init__(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                         image_encoder=image_encoder, feature_extractor=feature_extractor,
                         force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self._set_adapter(adapter)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image=None,
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
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        adapter_conditioning_scale: float | list[float] = 1.0,
        adapter_conditioning_factor: float = 1.0,
        clip_skip: int | None = None,
    ):
        return self._generate(locals())
