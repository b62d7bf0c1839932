"""Stable Diffusion XL (Podell et al. 2023): text-to-image, image-to-image / refiner, inpainting.

SDXL conditions the UNet on two text encoders (penultimate hidden states concatenated), the
second encoder's pooled embedding, and "micro-conditioning" time ids: original size, crop
top-left and target size (or, for the refiner, an aesthetic score instead of the target size).
Base and refiner hand over with ``denoising_end`` / ``denoising_start`` (fractions of the
training schedule), which the kernel's tasks handle.  No invisible watermark is applied
(``add_watermarker`` is accepted and ignored).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import torch

from kernel.engine import Conditioning
from kernel.pipeline_utils import check_pooled
from kernel_clip import encode_prompt_xl

from kernel_sd.base import StableDiffusionBase, check_prompts
from kernel_sd.outputs import StableDiffusionXLPipelineOutput


class _StableDiffusionXLCommon(StableDiffusionBase):
    pipeline_family = "stable-diffusion-xl"
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

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        self._prepare_size(call, self._default_size() if self._task == "inpainting" else
                           (self.default_sample_size * self.vae_scale_factor,) * 2)
        check_prompts(call)
        check_pooled(call.prompt_embeds, call.pooled_prompt_embeds, call.negative_prompt_embeds,
                     call.negative_pooled_prompt_embeds)

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        pos, neg, pooled, neg_pooled = self.encode_prompt(
            call.prompt, call.prompt_2, call.device, call.num_images_per_prompt, negative, call.negative_prompt,
            call.negative_prompt_2, call.prompt_embeds, call.negative_prompt_embeds, call.pooled_prompt_embeds,
            call.negative_pooled_prompt_embeds, self._lora_scale(), call.clip_skip)
        call.projection_dim = self.text_encoder_2.config.projection_dim if self.text_encoder_2 is not None \
            else int(pooled.shape[-1])
        positive = {"prompt_embeds": pos.to(call.device), "add_text_embeds": pooled.to(call.device)}
        negative_side = {"prompt_embeds": neg.to(call.device), "add_text_embeds": neg_pooled.to(call.device)} \
            if negative else None
        return Conditioning(positive, negative_side)

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

    def _micro_conditioning(self, call: SimpleNamespace, height: int, width: int) -> tuple[list, list]:
        """Positive and negative time-id values (overridden by the refiner-style pipelines)."""
        original = tuple(call.original_size or (height, width))
        target = tuple(call.target_size or (height, width))
        pos = [*original, *call.crops_coords_top_left, *target]
        if call.negative_original_size is not None and call.negative_target_size is not None:
            return pos, [*call.negative_original_size, *call.negative_crops_coords_top_left,
                         *call.negative_target_size]
        return pos, pos

    def _late_conditioning(self, call: SimpleNamespace, cond: Conditioning, latents: torch.Tensor) -> None:
        super()._late_conditioning(call, cond, latents)
        height, width = (s * self.vae_scale_factor for s in latents.shape[-2:])
        pos_values, neg_values = self._micro_conditioning(call, height, width)
        dtype = cond.positive["prompt_embeds"].dtype
        pos = self._time_ids(pos_values, call.projection_dim, dtype).to(call.device)
        neg = self._time_ids(neg_values, call.projection_dim, dtype).to(call.device)
        b = call.batch
        if cond.negative is not None and self._task == "text2image":
            # The base pipeline stacks [negative, positive] and then tiles that pair over the batch,
            # so with negative sizes and a batch > 1 the rows interleave; kept for identical numbers.
            stacked = torch.cat([neg, pos]).repeat(b, 1)
            cond.negative["add_time_ids"], cond.positive["add_time_ids"] = stacked[:b], stacked[b:]
            return
        cond.positive["add_time_ids"] = pos.repeat(b, 1)
        if cond.negative is not None:
            cond.negative["add_time_ids"] = neg.repeat(b, 1)

    def _added_cond(self, cond: dict) -> dict:
        added = super()._added_cond(cond) or {}  # IP-Adapter image embeddings (IPAdapterMixin)
        return {**added, "text_embeds": cond["add_text_embeds"], "time_ids": cond["add_time_ids"]}

    def _encode_vae(self, pixels: torch.Tensor, generator) -> torch.Tensor:
        """SDXL's VAE overflows in float16: encode in float32 when it says ``force_upcast``."""
        dtype = pixels.dtype
        upcast = getattr(self.vae.config, "force_upcast", False)
        if upcast:
            pixels = pixels.float()
            self.vae.to(dtype=torch.float32)
        latents = super()._encode_vae(pixels, generator)
        if upcast:
            self.vae.to(dtype)
        return latents.to(dtype)

    def _vae_decode(self, latents: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        upcast = self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        if upcast:
            self.upcast_vae()
            latents = latents.to(torch.float32)
        image = super()._vae_decode(latents, call)
        if upcast:
            self.vae.to(dtype=torch.float16)
        return image

    def _output(self, images: Any, call: SimpleNamespace):
        return StableDiffusionXLPipelineOutput(images=images) if call.return_dict else (images,)


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
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
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
        return self._generate(locals())


class _XLImageBase(_StableDiffusionXLCommon):
    """Shared by SDXL image-to-image (refiner) and inpainting."""

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                 image_encoder=None, feature_extractor=None, requires_aesthetics_score: bool = False,
                 force_zeros_for_empty_prompt: bool = True, add_watermarker: bool | None = None) -> None:
        self._register(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                       feature_extractor, force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
                       requires_aesthetics_score=requires_aesthetics_score)

    def _micro_conditioning(self, call: SimpleNamespace, height: int, width: int) -> tuple[list, list]:
        original = tuple(call.original_size or (height, width))
        target = tuple(call.target_size or (height, width))
        negative_original = tuple(call.negative_original_size or original)
        negative_target = tuple(call.negative_target_size or target)
        if self.config.requires_aesthetics_score:
            return ([*original, *call.crops_coords_top_left, call.aesthetic_score],
                    [*negative_original, *call.negative_crops_coords_top_left, call.negative_aesthetic_score])
        # Without aesthetic scores Diffusers pairs the negative sizes with the positive crop
        # coordinates; kept for identical numbers.
        return ([*original, *call.crops_coords_top_left, *target],
                [*negative_original, *call.crops_coords_top_left, *negative_target])


class StableDiffusionXLImg2ImgPipeline(_XLImageBase):
    """SDXL image-to-image, and the SDXL refiner (``requires_aesthetics_score=True``, only
    ``text_encoder_2``): with ``denoising_start`` it continues a base model's ``output_type="latent"``
    result from where ``denoising_end`` stopped it."""

    _task = "image2image"

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
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
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
        return self._generate(locals())


class StableDiffusionXLInpaintPipeline(_XLImageBase):
    """SDXL inpainting (4-channel base UNets by latent blending, 9-channel inpainting UNets by input channels)."""

    _task = "inpainting"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "mask",
                               "masked_image_latents"]

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
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
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
        return self._generate(locals())
