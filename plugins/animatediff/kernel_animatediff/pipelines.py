"""AnimateDiff pipelines (Guo et al., arXiv:2307.04725): Stable Diffusion 1.5 made to generate video.

Both classes are Stable Diffusion pipelines of ``kernel-sd`` (CLIP prompt encoding, LoRA, textual
inversion, the UNet evaluation) run by the kernel's engine; this module adds what video changes:

* the latent grid is 5-D, ``(B, C, F, H / 8, W / 8)`` (:meth:`_latent_shape`);
* the denoiser is a :class:`~kernel_animatediff.unet_motion.UNetMotionModel`; a 2-D UNet given with a
  ``motion_adapter`` is turned into one, as Diffusers does;
* decoding runs the VAE on ``decode_chunk_size`` frames at a time and returns frames
  (:meth:`_decode`), through :class:`kernel_video.VideoProcessor`;
* video-to-video encodes the input frames and noises them to the first kept step (the engine's
  image-to-image task with the video as its image, :meth:`AnimateDiffVideoToVideoPipeline._image2image`).

``num_videos_per_prompt`` is honoured (Diffusers 0.42 ignores it and always makes one video per
prompt); everything else follows Diffusers' numbers.  FreeInit and FreeNoise come from
:class:`~kernel_animatediff.free_init.FreeInitMixin` and :class:`~kernel_animatediff.free_noise.FreeNoiseMixin`.
The callback's ``prompt_embeds`` hold one row per video (per frame with FreeNoise's keyed prompts).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import torch

from kernel.outputs import BaseOutput
from kernel.pipeline_utils import latents_of, repeat_to_batch, retrieve_timesteps, strength_timesteps
from kernel.scheduling import randn_tensor
from kernel_sd.base import check_prompts
from kernel_sd.sd import _StableDiffusionCommon
from kernel_video import VideoProcessor

from kernel_animatediff.free_init import FreeInitMixin
from kernel_animatediff.free_noise import FreeNoiseMixin, free_noise_latents
from kernel_animatediff.motion_adapter import MotionAdapter
from kernel_animatediff.unet_motion import UNetMotionModel


@dataclass
class AnimateDiffPipelineOutput(BaseOutput):
    """``frames``: a list (one per video) of lists of PIL frames, an ``(B, F, H, W, C)`` array, an
    ``(B, F, C, H, W)`` tensor, or the ``(B, C, F, h, w)`` latents."""

    frames: Any


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class _AnimateDiffBase(FreeInitMixin, FreeNoiseMixin, _StableDiffusionCommon):
    """What both AnimateDiff pipelines share: construction, the video grid, checks and decoding."""

    pipeline_family = "animatediff"
    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ["feature_extractor", "image_encoder", "motion_adapter"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, vae, text_encoder, tokenizer, unet, motion_adapter, scheduler, feature_extractor=None,
                 image_encoder=None) -> None:
        if not isinstance(unet, UNetMotionModel):
            if motion_adapter is not None and not isinstance(motion_adapter, MotionAdapter):
                raise TypeError(f"motion_adapter must be a MotionAdapter, got {type(motion_adapter).__name__}")
            unet = UNetMotionModel.from_unet2d(unet, motion_adapter)
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              motion_adapter=motion_adapter, scheduler=scheduler, feature_extractor=feature_extractor,
                              image_encoder=image_encoder)
        self._setup_processors()

    def _setup_processors(self) -> None:
        super()._setup_processors()
        self.video_processor = VideoProcessor(do_resize=self._resize_video, vae_scale_factor=self.vae_scale_factor)

    _resize_video = False

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        _positive_int("num_videos_per_prompt", call.num_videos_per_prompt)
        _positive_int("decode_chunk_size", call.decode_chunk_size)
        call.num_images_per_prompt = call.num_videos_per_prompt
        self._prepare_size(call, self._default_size())
        self._prepare_frames(call)
        self._prepare_free_noise_prompts(call)  # FreeNoise: {frame: prompt} dicts
        check_prompts(call)
        limit = self.unet.config.motion_max_seq_length
        if call.num_frames > limit and not self.free_noise_enabled:
            raise ValueError(f"num_frames={call.num_frames} is more than the motion modules cover "
                             f"(motion_max_seq_length={limit}); generate at most {limit} frames, or enable FreeNoise "
                             "(enable_free_noise) for longer videos")

    def _encode(self, call: SimpleNamespace, negative: bool):
        if getattr(call, "frame_prompts", None) is not None:
            return self._encode_free_noise(call, negative)
        return super()._encode(call, negative)

    def _prepare_frames(self, call: SimpleNamespace) -> None:
        _positive_int("num_frames", call.num_frames)

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        f = self.vae_scale_factor
        return (call.batch, self.unet.config.in_channels, call.num_frames, call.height // f, call.width // f)

    def _vae_decode(self, latents: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        """``(B, C, F, h, w)`` latents -> ``(B, 3, F, H, W)`` float32 pixels in [-1, 1], ``decode_chunk_size`` frames a call."""
        b, c, frames, h, w = latents.shape
        z = self.vae.denormalize_latents(latents.permute(0, 2, 1, 3, 4).reshape(b * frames, c, h, w))
        z = z.to(self.vae.dtype)
        chunk = call.decode_chunk_size
        pixels = torch.cat([self.vae.decode(z[i:i + chunk], return_dict=False)[0] for i in range(0, z.shape[0], chunk)])
        return pixels.reshape(b, frames, *pixels.shape[1:]).permute(0, 2, 1, 3, 4).float()

    def _decode(self, latents: torch.Tensor, call: SimpleNamespace) -> Any:
        if call.output_type == "latent":
            return latents
        return self.video_processor.postprocess_video(self._vae_decode(latents, call), output_type=call.output_type)

    def _output(self, frames: Any, call: SimpleNamespace):
        if not call.return_dict:
            return (frames,)
        return AnimateDiffPipelineOutput(frames=frames)


class AnimateDiffPipeline(_AnimateDiffBase):
    """Text-to-video with an SD 1.5 UNet and a motion adapter."""

    def _noise(self, call: SimpleNamespace, shape) -> torch.Tensor:
        noise = super()._noise(call, shape)
        if self.free_noise_enabled and len(shape) == 5:
            fn = self._free_noise
            noise = free_noise_latents(noise, fn.context_length, fn.context_stride, fn.noise_type, call.generator)
        return noise

    def _given_latents(self, call: SimpleNamespace, shape) -> torch.Tensor:
        """With FreeNoise's ``noise_type="repeat_context"``, latents for one window (``context_length`` frames)
        are tiled over the video, as Diffusers does; otherwise the latents cover every frame."""
        fn, latents = self._free_noise if self.free_noise_enabled else None, call.latents
        if (fn is not None and isinstance(latents, torch.Tensor) and latents.ndim == 5 and len(shape) == 5
                and latents.shape[2] == fn.context_length < shape[2]):
            if fn.noise_type != "repeat_context":
                raise ValueError(f"latents have {fn.context_length} frames (one FreeNoise window) for num_frames="
                                 f"{shape[2]}; give latents for every frame, or enable FreeNoise with "
                                 "noise_type='repeat_context' to repeat one window's latents over the video")
            repeats = -(-shape[2] // fn.context_length)
            call.latents = latents.repeat(1, 1, repeats, 1, 1)[:, :, :shape[2]]
        return super()._given_latents(call, shape)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_frames: int | None = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_videos_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        decode_chunk_size: int = 16,
    ):
        return self._generate(locals())


class AnimateDiffVideoToVideoPipeline(_AnimateDiffBase):
    """Video-to-video (SDEdit on every frame, with motion modules): noise the input video's latents to
    ``strength`` and denoise them under the prompt."""

    _task = "image2image"
    _resize_video = True
    _free_init_carries_steps = True  # Diffusers' video-to-video FreeInit re-trims each pass's schedule

    @torch.no_grad()
    def __call__(
        self,
        video: list | None = None,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        enforce_inference_steps: bool = False,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        strength: float = 0.8,
        negative_prompt: str | list[str] | None = None,
        num_videos_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        decode_chunk_size: int = 16,
    ):
        return self._generate(locals())

    # ---------------------------------------------------------------- engine hooks
    def _prepare_frames(self, call: SimpleNamespace) -> None:
        """The frame count comes from the video (or from ``latents``)."""
        if call.latents is not None:
            if not isinstance(call.latents, torch.Tensor) or call.latents.ndim != 5:
                raise ValueError("latents must be a (batch, channels, frames, height, width) tensor, got "
                                 f"{getattr(call.latents, 'shape', type(call.latents).__name__)}")
            call.num_frames, call.pixels = call.latents.shape[2], None
            return
        if call.video is None:
            raise ValueError("video is required: a list of frames (PIL images, arrays or tensors), a list of such "
                             "videos, or a 4-D / 5-D array or tensor")
        call.pixels = self.video_processor.preprocess_video(call.video, height=call.height, width=call.width)
        call.num_frames = call.pixels.shape[2]

    def _timesteps(self, call: SimpleNamespace) -> tuple[torch.Tensor, int]:
        if not call.enforce_inference_steps:
            return super()._timesteps(call)
        # Exactly num_inference_steps steps: the tail of a longer schedule that strength would trim to them.
        _positive_int("num_inference_steps", call.num_inference_steps)
        if call.strength == 0:
            raise ValueError("enforce_inference_steps=True needs strength > 0")
        # Custom timesteps / sigmas give the whole schedule, whose last num_inference_steps steps run (as Diffusers).
        total = int(call.num_inference_steps / call.strength)
        schedule, _ = retrieve_timesteps(self.scheduler, total, call.device, call.timesteps, call.sigmas)
        timesteps = schedule[-call.num_inference_steps:]
        self.scheduler.set_begin_index(len(self.scheduler.timesteps) - len(timesteps))
        call.scheduled_steps = len(timesteps)
        return timesteps, len(timesteps)

    def _image2image(self, call: SimpleNamespace, cond, timesteps: torch.Tensor):
        shape = self._latent_shape(call)
        first = timesteps[:1].repeat(call.batch)
        if call.latents is not None:
            if tuple(call.latents.shape) != tuple(shape):
                raise ValueError(f"latents must have shape {tuple(shape)} (batch x channels x frames x height/"
                                 f"{self.vae_scale_factor} x width/{self.vae_scale_factor}), got {tuple(call.latents.shape)}")
            latents = call.latents.to(device=call.device, dtype=call.dtype)
            if call.enforce_inference_steps:
                latents = self.scheduler.add_noise(latents, self._noise(call, shape), first)
            return latents, None, ()
        init = self._video_latents(call)  # (B, F, C, h, w), as Diffusers draws the noise in this layout
        noise = randn_tensor(tuple(init.shape), generator=call.generator, device=call.device, dtype=call.dtype)
        return self.scheduler.add_noise(init, noise, first).permute(0, 2, 1, 3, 4), None, ()

    def _video_latents(self, call: SimpleNamespace) -> torch.Tensor:
        """Normalised latents ``(B, F, C, h, w)`` of the input videos, ``decode_chunk_size`` frames per VAE call
        (one encoding per generator when given a list of them)."""
        videos = call.pixels.permute(0, 2, 1, 3, 4).to(device=call.device)  # (V, F, C, H, W)
        if videos.shape[0] not in (1, call.batch):
            raise ValueError(f"got {videos.shape[0]} videos for a batch of {call.batch} (prompts x "
                             "num_videos_per_prompt); pass one video or one per generated video")
        generators = call.generator if isinstance(call.generator, list) else None
        if generators is not None:
            videos = repeat_to_batch(videos, call.batch, "videos")
        vae = self.vae
        upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
        dtype = torch.float32 if upcast else vae.dtype
        if upcast:
            vae.to(dtype=torch.float32)
        try:
            latents = []
            for i, frames in enumerate(videos):
                g = generators[i] if generators is not None else call.generator
                chunks = [latents_of(vae.encode(frames[j:j + call.decode_chunk_size].to(dtype)), g)
                          for j in range(0, frames.shape[0], call.decode_chunk_size)]
                latents.append(torch.cat(chunks))
        finally:
            if upcast:
                vae.to(dtype=torch.float16)
        init = vae.normalize_latents(torch.stack(latents).to(call.dtype))
        return repeat_to_batch(init, call.batch, "videos")

    def _free_init_schedule(self, steps: int, device: Any) -> tuple[torch.Tensor, int]:
        self.scheduler.set_timesteps(steps, device=device)
        return strength_timesteps(self.scheduler, len(self.scheduler.timesteps), self._call.strength)
