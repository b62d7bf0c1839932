"""``AnimateDiffSDXLPipeline``: AnimateDiff's motion modules on a Stable Diffusion XL UNet.

The SDXL family of ``kernel-sd`` supplies the conditioning (two CLIP encoders, the pooled embedding,
micro-conditioning time ids, ``denoising_end``, guidance rescale); the AnimateDiff pieces supply the
video: 5-D latents ``(B, C, F, H / 8, W / 8)``, a :class:`~kernel_animatediff.unet_motion.UNetMotionModel`
(an SDXL ``UNet2DConditionModel`` given with a ``motion_adapter`` is turned into one, keeping its
``text_time`` added embedding) and frame decoding ``decode_chunk_size`` frames per VAE call.

Diffusers' SDXL motion adapters (e.g. the beta adapter) are :class:`MotionAdapter` configs with three
stages, no mid-block motion modules (``use_motion_mid_block=False``) and ``motion_max_seq_length=32``.
``num_videos_per_prompt`` is honoured (Diffusers 0.42 always makes one video per prompt), and
``decode_chunk_size`` is an extra keyword (Diffusers decodes all frames in one call: same numbers).
FreeInit (``enable_free_init``) is :class:`~kernel_animatediff.free_init.FreeInitMixin`; FreeNoise is not wired here.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import torch

from kernel_sd.sdxl import _StableDiffusionXLCommon
from kernel_video import VideoProcessor

from kernel_animatediff.free_init import FreeInitMixin
from kernel_animatediff.motion_adapter import MotionAdapter
from kernel_animatediff.pipelines import _AnimateDiffBase, _positive_int
from kernel_animatediff.unet_motion import UNetMotionModel


class AnimateDiffSDXLPipeline(FreeInitMixin, _StableDiffusionXLCommon):
    """Text-to-video with an SDXL UNet and an SDXL motion adapter; FreeInit through ``enable_free_init``."""

    pipeline_family = "animatediff-sdxl"
    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->vae"
    _optional_components = ["tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "image_encoder",
                            "feature_extractor", "motion_adapter"]

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, motion_adapter, scheduler,
                 image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt: bool = True) -> None:
        if unet is not None and not isinstance(unet, UNetMotionModel):
            if motion_adapter is not None and not isinstance(motion_adapter, MotionAdapter):
                raise TypeError(f"motion_adapter must be a MotionAdapter, got {type(motion_adapter).__name__}")
            if dict(unet.config).get("addition_embed_type") != "text_time":
                raise ValueError("AnimateDiffSDXLPipeline needs an SDXL UNet (addition_embed_type='text_time'), got "
                                 f"addition_embed_type={dict(unet.config).get('addition_embed_type')!r}; use "
                                 "AnimateDiffPipeline for SD 1.5 UNets")
            unet = UNetMotionModel.from_unet2d(unet, motion_adapter)
        self._register(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                       feature_extractor, force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.register_modules(motion_adapter=motion_adapter)

    def _setup_processors(self) -> None:
        super()._setup_processors()
        self.video_processor = VideoProcessor(do_resize=False, vae_scale_factor=self.vae_scale_factor)

    # ---------------------------------------------------------------- engine hooks (video from AnimateDiff)
    def _prepare(self, call: SimpleNamespace) -> None:
        _positive_int("num_videos_per_prompt", call.num_videos_per_prompt)
        _positive_int("decode_chunk_size", call.decode_chunk_size)
        _positive_int("num_frames", call.num_frames)
        call.num_images_per_prompt = call.num_videos_per_prompt
        super()._prepare(call)
        limit = self.unet.config.motion_max_seq_length
        if call.num_frames > limit:
            raise ValueError(f"num_frames={call.num_frames} is more than the motion modules cover "
                             f"(motion_max_seq_length={limit}); generate at most {limit} frames")

    _latent_shape = _AnimateDiffBase._latent_shape
    _decode = _AnimateDiffBase._decode
    _output = _AnimateDiffBase._output

    def _vae_decode(self, latents: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        """Frames in chunks; the VAE runs in float32 when it is float16 and says ``force_upcast`` (SDXL's overflows)."""
        upcast = self.vae.dtype == torch.float16 and self.vae.config.get("force_upcast", False)
        if upcast:
            self.upcast_vae()
            latents = latents.to(torch.float32)
        try:
            return _AnimateDiffBase._vae_decode(self, latents, call)
        finally:
            if upcast:
                self.vae.to(dtype=torch.float16)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        num_frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_videos_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str | None = "pil",
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
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        decode_chunk_size: int = 16,
    ):
        return self._generate(locals())
