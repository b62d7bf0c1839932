"""CogVideoX text-to-video (Yang et al., arXiv:2408.06072) on the kernel's engine.

T5 embeds the prompt (padded to ``max_sequence_length`` = 226 tokens, no mask); the expert transformer
denoises frames-first latents ``(B, F, C, h, w)`` with ``F = (num_frames - 1) / 4 + 1``; the causal 3-D VAE
decodes them (:class:`kernel_video.VideoProcessor` makes the frames).  Rotary tables are computed once per
call (5b, 1.5).  ``use_dynamic_cfg`` raises the guidance scale along the schedule with Diffusers' cosine
ramp (:class:`DynamicClassifierFreeGuidance`).  With temporal patches (1.5), latent frames are padded at the
front to a multiple of ``patch_size_t`` and dropped before decoding.  The loop, CFG batching and callbacks
are the engine's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Mapping

import torch

from kernel.config import register_to_config
from kernel.engine import Conditioning
from kernel.guidance import GuidanceStep
from kernel.outputs import BaseOutput
from kernel.pipeline import DiffusionPipeline
from kernel.pipeline_utils import check_prompts, latents_of, repeat_to_batch
from kernel_guiders import ClassifierFreeGuidance
from kernel_t5 import check_max_sequence_length, t5_prompt_embeds
from kernel_video import VideoProcessor

from kernel_cogvideo.embeddings import get_3d_rotary_pos_embed
from kernel_cogvideo.scheduler import CogVideoXDPMScheduler


@dataclass
class CogVideoXPipelineOutput(BaseOutput):
    """``frames``: a list (one per video) of lists of PIL frames, an ``(B, F, H, W, C)`` array, an
    ``(B, F, C, H, W)`` tensor, or the ``(B, F, C, h, w)`` latents."""

    frames: Any


def dynamic_guidance_scale(guidance_scale: float, timestep: float, num_inference_steps: int) -> float:
    """CogVideoX's cosine ramp: ``1 + g * (1 - cos(pi * ((n - t) / n) ** 5)) / 2`` (Diffusers' formula, with the
    timestep ``t`` itself, not the step index)."""
    return 1 + guidance_scale * ((1 - math.cos(math.pi * ((num_inference_steps - timestep) / num_inference_steps) ** 5.0)) / 2)


class DynamicClassifierFreeGuidance(ClassifierFreeGuidance):
    """Classifier-free guidance whose scale follows :func:`dynamic_guidance_scale` step by step.

    Whether guidance runs at all is decided by the base ``guidance_scale`` (> 1), as in the reference.
    ``num_inference_steps=None`` takes the number of steps the loop runs (after ``strength`` trimming in
    video-to-video, as the reference).
    """

    @register_to_config
    def __init__(self, guidance_scale: float = 6.0, num_inference_steps: int | None = None):
        super().__init__(guidance_scale=guidance_scale)
        self.num_inference_steps = num_inference_steps
        self.current_scale = guidance_scale

    def combine(self, predictions: Mapping[str, torch.Tensor], step: GuidanceStep) -> torch.Tensor:
        t = float(step.timestep.item() if isinstance(step.timestep, torch.Tensor) else step.timestep)
        steps = self.num_inference_steps or step.num_steps
        self.current_scale = dynamic_guidance_scale(self.guidance_scale, t, steps)
        cond = predictions["pred_cond"]
        if "pred_uncond" not in predictions:
            return cond
        uncond = predictions["pred_uncond"]
        return uncond + self.current_scale * (cond - uncond)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class CogVideoXPipeline(DiffusionPipeline):
    """CogVideoX text-to-video (Diffusers' arguments, defaults and numbers)."""

    pipeline_family = "cogvideox"
    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components: list[str] = []
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    _floor_kept_steps = False
    #: per-video latents (conditioning tensors by name) concatenated to the noisy latents along the channels
    _channel_latents: tuple[str, ...] = ()

    def __init__(self, tokenizer, text_encoder, vae, transformer, scheduler):
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                              scheduler=scheduler)
        self.vae_scale_factor_spatial = vae.spatial_compression_ratio if vae is not None else 8
        self.vae_scale_factor_temporal = vae.config.temporal_compression_ratio if vae is not None else 4
        self.vae_scaling_factor_image = vae.config.scaling_factor if vae is not None else 0.7
        self.vae_scale_factor = self.vae_scale_factor_spatial
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)

    def _decoded_frames(self, latent_frames: int) -> int:
        """Frames the VAE decodes ``latent_frames`` into (its own count where it offers one, else the causal rule)."""
        count = getattr(self.vae, "num_decoded_frames", None)
        if count is not None:
            return count(latent_frames)
        return 1 + (latent_frames - 1) * self.vae_scale_factor_temporal

    def _check_frame_count(self, what: str, frames: int) -> int:
        """The latent frames of ``frames`` frames; a ``ValueError`` where the VAE would not give ``frames`` frames back
        (Diffusers returns another number of frames then: 6 -> 8 with 4x temporal compression and batches of 2)."""
        latent_frames = (frames - 1) // self.vae_scale_factor_temporal + 1
        got = self._decoded_frames(latent_frames)
        if got != frames:
            accepted = sorted({self._decoded_frames(f) for f in range(1, max(latent_frames + 3, 7))})
            below = max(a for a in accepted if a < frames)
            above = min(a for a in accepted if a > frames)
            raise ValueError(f"{what} gives {latent_frames} latent frames, which the VAE decodes to {got} frames: pass a "
                             f"frame count it returns unchanged ({', '.join(map(str, accepted[:6]))}, ...: "
                             f"1 + {self.vae_scale_factor_temporal}k for odd latent frame counts, "
                             f"{self.vae_scale_factor_temporal}k for even ones); the nearest are {below} and {above}")
        return latent_frames

    # ---------------------------------------------------------------- prompts
    def _t5_embeds(self, prompt, num_videos_per_prompt: int, max_sequence_length: int, device, dtype):
        return t5_prompt_embeds(self.tokenizer, self.text_encoder, prompt, max_sequence_length, num_videos_per_prompt,
                                device, dtype, width=self.transformer.config.text_embed_dim).to(dtype=dtype)

    def encode_prompt(self, prompt, negative_prompt=None, do_classifier_free_guidance: bool = True,
                      num_videos_per_prompt: int = 1, prompt_embeds=None, negative_prompt_embeds=None,
                      max_sequence_length: int = 226, device=None, dtype=None):
        """``(prompt_embeds, negative_prompt_embeds)``: T5 states ``(B * num_videos_per_prompt, L, D)``; the negative
        ones (``""`` by default) only with guidance."""
        device = device or self._execution_device
        if dtype is None:
            dtype = self.text_encoder.dtype if self.text_encoder is not None else self.transformer.dtype
        if prompt_embeds is None:
            prompt_embeds = self._t5_embeds(prompt, num_videos_per_prompt, max_sequence_length, device, dtype)
        batch = len(prompt) if isinstance(prompt, list) else 1 if prompt is not None else prompt_embeds.shape[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = negative_prompt or ""
            negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else negative_prompt
            if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
                raise TypeError(f"negative_prompt must be a str or a list of str, got {type(negative_prompt).__name__}")
            if len(negatives) != batch:
                raise ValueError(f"negative_prompt has {len(negatives)} entries but the prompt batch is {batch}; "
                                 "give one per prompt or a single str")
            negative_prompt_embeds = self._t5_embeds(negatives, num_videos_per_prompt, max_sequence_length, device,
                                                     dtype)
        return prompt_embeds, negative_prompt_embeds

    def fuse_qkv_projections(self) -> None:
        """One q/k/v matmul per attention layer of the transformer (same numbers, fewer kernel launches)."""
        self.fusing_transformer = True
        self.transformer.fuse_qkv_projections()

    def unfuse_qkv_projections(self) -> None:
        self.transformer.unfuse_qkv_projections()
        self.fusing_transformer = False

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        cfg = self.transformer.config
        default = {"height": cfg.sample_height * self.vae_scale_factor_spatial,
                   "width": cfg.sample_width * self.vae_scale_factor_spatial, "num_frames": cfg.sample_frames}
        for name, value in default.items():  # only None takes the default: 0 is an error
            if getattr(call, name) is None:
                setattr(call, name, value)
        for name in ("height", "width"):
            value = getattr(call, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8, got {value!r}")
            if value % (self.vae_scale_factor_spatial * cfg.patch_size):
                raise ValueError(f"{name}={value} must be a multiple of {self.vae_scale_factor_spatial * cfg.patch_size} "
                                 f"(VAE factor {self.vae_scale_factor_spatial} x patch size {cfg.patch_size})")
        _positive_int("num_frames", call.num_frames)
        _positive_int("num_videos_per_prompt", call.num_videos_per_prompt)
        call.num_images_per_prompt = call.num_videos_per_prompt
        check_max_sequence_length(call.max_sequence_length)
        if not cfg.use_rotary_positional_embeddings or cfg.use_learned_positional_embeddings:
            if call.max_sequence_length != cfg.max_text_seq_length:
                raise ValueError(f"max_sequence_length={call.max_sequence_length}: this transformer's position table "
                                 f"covers exactly max_text_seq_length={cfg.max_text_seq_length} text tokens")
        check_prompts({"prompt": call.prompt}, call.prompt_embeds, {"negative_prompt": call.negative_prompt},
                      call.negative_prompt_embeds)
        call.latent_frames = self._check_frame_count(f"num_frames={call.num_frames}", call.num_frames)
        pt = cfg.patch_size_t
        call.additional_frames = (pt - call.latent_frames % pt) % pt if pt is not None else 0
        call.latent_frames += call.additional_frames

    def _default_guider(self, call: SimpleNamespace):
        if call.use_dynamic_cfg:
            return DynamicClassifierFreeGuidance(call.guidance_scale)
        return super()._default_guider(call)

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        embeds, neg = self.encode_prompt(call.prompt, call.negative_prompt, negative, call.num_videos_per_prompt,
                                         call.prompt_embeds, call.negative_prompt_embeds, call.max_sequence_length,
                                         call.device)
        # encoded text comes back repeated per video already; given embeddings are repeated here
        n = call.num_videos_per_prompt
        if call.prompt_embeds is not None:
            embeds = embeds.repeat_interleave(n, dim=0)
        if negative and call.negative_prompt_embeds is not None:
            neg = neg.repeat_interleave(n, dim=0)
        return Conditioning({"prompt_embeds": embeds}, {"prompt_embeds": neg} if negative else None)

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        f = self.vae_scale_factor_spatial
        return (call.batch, call.latent_frames, self.transformer.config.in_channels, call.height // f, call.width // f)

    def _rotary_embeddings(self, height: int, width: int, latent_frames: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(cos, sin)`` tables of the video tokens: crop-centred ``linspace`` grids (1.0), integer grids (1.5)."""
        cfg = self.transformer.config
        p, pt = cfg.patch_size, cfg.patch_size_t
        rows = height // (self.vae_scale_factor_spatial * p)
        cols = width // (self.vae_scale_factor_spatial * p)
        base_rows, base_cols = cfg.sample_height // p, cfg.sample_width // p
        if pt is not None:
            return get_3d_rotary_pos_embed(cfg.attention_head_dim, None, (rows, cols), (latent_frames + pt - 1) // pt,
                                           grid_type="slice", max_size=(base_rows, base_cols), device=device)
        return get_3d_rotary_pos_embed(cfg.attention_head_dim, resize_crop_region((rows, cols), base_cols, base_rows),
                                       (rows, cols), latent_frames, device=device)

    def _late_conditioning(self, call: SimpleNamespace, cond: Conditioning, latents: torch.Tensor) -> None:
        call.image_rotary_emb = None
        if self.transformer.config.use_rotary_positional_embeddings:
            call.image_rotary_emb = self._rotary_embeddings(call.height, call.width, latents.shape[1], latents.device)

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        if self._channel_latents:
            model_input = torch.cat([model_input, *(cond[n].to(model_input.dtype) for n in self._channel_latents)], dim=2)
        timestep = (timestep[None] if timestep.ndim == 0 else timestep).to(model_input.device)
        out = self.transformer(hidden_states=model_input, encoder_hidden_states=cond["prompt_embeds"],
                               timestep=timestep.expand(model_input.shape[0]),
                               image_rotary_emb=self._call.image_rotary_emb,
                               attention_kwargs=self._call.attention_kwargs, return_dict=False, **kwargs)[0]
        return out.float()

    def _scheduler_step(self, prediction, t, latents, index, timesteps, kwargs):
        """DDIM steps as usual; :class:`CogVideoXDPMScheduler` also takes the previous step's ``x0`` and timestep,
        carried here from step to step of the call (none at the loop's first step)."""
        if not isinstance(self.scheduler, CogVideoXDPMScheduler):
            return super()._scheduler_step(prediction, t, latents, index, timesteps, kwargs)
        old_x0 = getattr(self._call, "old_pred_original_sample", None) if index > 0 else None
        back = timesteps[index - 1] if index > 0 else None
        stepped = self.scheduler.step(prediction, old_x0, t, back, latents, **kwargs, return_dict=False)
        self._call.old_pred_original_sample = stepped[1]
        return stepped

    def _vae_decode(self, latents: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        """``(B, F, C, h, w)`` latents -> ``(B, 3, frames, H, W)`` pixels in [-1, 1] (padding frames dropped)."""
        z = self.vae.denormalize_latents(latents[:, call.additional_frames:].permute(0, 2, 1, 3, 4))
        return self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]

    def _decode(self, latents: torch.Tensor, call: SimpleNamespace) -> Any:
        if call.output_type == "latent":
            return latents
        return self.video_processor.postprocess_video(self._vae_decode(latents, call), output_type=call.output_type)

    def _output(self, frames: Any, call: SimpleNamespace):
        return CogVideoXPipelineOutput(frames=frames) if call.return_dict else (frames,)

    @property
    def guidance_scale(self):
        guider = getattr(self, "_call_guider", None)
        return getattr(guider, "current_scale", self._guidance_scale)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        guidance_scale: float = 6,
        use_dynamic_cfg: bool = False,
        num_videos_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        max_sequence_length: int = 226,
    ):
        return self._generate(locals())


def resize_crop_region(grid: tuple[int, int], target_width: int, target_height: int):
    """``((top, left), (bottom, right))``: the ``grid`` resized to fit ``target_height x target_width`` (aspect kept),
    centred -- the crop the 1.0 rotary grids span."""
    h, w = grid
    if h / w > target_height / target_width:
        new_h, new_w = target_height, int(round(target_height / h * w))
    else:
        new_w, new_h = target_width, int(round(target_width / w * h))
    top, left = int(round((target_height - new_h) / 2.0)), int(round((target_width - new_w) / 2.0))
    return (top, left), (top + new_h, left + new_w)


class CogVideoXVideoToVideoPipeline(CogVideoXPipeline):
    """CogVideoX video-to-video (SDEdit, Meng et al., arXiv:2108.01073): the input video's latents are noised to
    the first step ``strength`` keeps and denoised under the prompt (the engine's image-to-image task)."""

    _task = "image2image"
    _floor_kept_steps = True  # keeps int(num_inference_steps * strength) steps, as the reference

    def _prepare(self, call: SimpleNamespace) -> None:
        if call.video is None and call.latents is None:
            raise ValueError("video is required: a list of frames (PIL images, arrays or tensors), or pass latents")
        if call.video is not None and call.latents is not None:
            raise ValueError("pass either video or latents, not both")
        if call.video is not None and (len(call.video) == 0 if isinstance(call.video, (list, tuple))
                                       else 0 in tuple(getattr(call.video, "shape", (1,)))):
            raise ValueError("video is empty: pass at least one frame (1 + 4k frames for 4x temporal compression)")
        call.num_frames = 1  # set from the video (or the latents) below, once the size is known
        super()._prepare(call)
        if call.latents is not None:
            call.pixels, call.latent_frames = None, call.latents.shape[1] if call.latents.ndim == 5 else 0
        else:
            call.pixels = self.video_processor.preprocess_video(call.video, height=call.height, width=call.width)
            call.num_frames = call.pixels.shape[2]
            call.latent_frames = self._check_frame_count(f"video has {call.num_frames} frames; it", call.num_frames)
        pt = self.transformer.config.patch_size_t
        if pt is not None and call.latent_frames % pt:
            raise ValueError(f"the video gives {call.latent_frames} latent frames, which patch_size_t={pt} does not "
                             "divide; pass 1 + 4k frames with a multiple of patch_size_t latent frames")
        call.additional_frames = 0

    def _image2image(self, call: SimpleNamespace, cond, timesteps: torch.Tensor):
        shape = self._latent_shape(call)
        if call.latents is not None:
            return self._given_latents(call, shape) * self.scheduler.init_noise_sigma, None, ()
        videos = call.pixels.to(device=call.device, dtype=self.vae.dtype)
        if videos.shape[0] not in (1, call.batch):
            raise ValueError(f"got {videos.shape[0]} videos for a batch of {call.batch} (prompts x "
                             "num_videos_per_prompt); pass one video or one per generated video")
        # one posterior sample per input video (per generator when given a list), drawn before the noise
        generators = call.generator if isinstance(call.generator, list) else None
        if generators is not None:
            videos = repeat_to_batch(videos, call.batch, "videos")
        init = torch.cat([latents_of(self.vae.encode(v[None]), generators[i] if generators else call.generator)
                          for i, v in enumerate(videos)])
        init = repeat_to_batch(self.vae.normalize_latents(init.to(call.dtype)), call.batch, "videos")
        init = init.permute(0, 2, 1, 3, 4)
        noise = self._noise(call, shape)
        return self.scheduler.add_noise(init, noise, timesteps[:1].repeat(call.batch)), None, ()

    @torch.no_grad()
    def __call__(
        self,
        video: list | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        strength: float = 0.8,
        guidance_scale: float = 6,
        use_dynamic_cfg: bool = False,
        num_videos_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        max_sequence_length: int = 226,
    ):
        return self._generate(locals())


class CogVideoXImageToVideoPipeline(CogVideoXPipeline):
    """CogVideoX image-to-video: the first frame's latents (zeros for the other latent frames) are concatenated to
    the noisy latents along the channels at every step; 1.5 models also embed ``ofs = 2``."""

    # its transformer takes twice the latent channels: a text-to-video family load must refuse its folders
    pipeline_family = "cogvideox-i2v"
    _channel_latents = ("image_latents",)

    def _prepare(self, call: SimpleNamespace) -> None:
        if call.image is None:
            raise ValueError("image is required: a PIL image, an array or a tensor (the first frame)")
        if not isinstance(call.image, (torch.Tensor, list)) and not hasattr(call.image, "convert"):
            raise ValueError(f"image must be a PIL image, a list of them or a tensor, got {type(call.image).__name__}")
        super()._prepare(call)

    def _image_latents(self, call: SimpleNamespace, dtype: torch.dtype) -> torch.Tensor:
        """``(B, F, C, h, w)``: the normalised latents of ``image`` as frame 0, zeros after."""
        pixels = self.video_processor.preprocess(call.image, height=call.height, width=call.width)
        pixels = pixels.to(device=call.device, dtype=self.vae.dtype)[:, :, None]  # one-frame videos
        if pixels.shape[0] not in (1, call.batch):
            raise ValueError(f"got {pixels.shape[0]} images for a batch of {call.batch}; pass one image or one per video")
        generators = call.generator if isinstance(call.generator, list) else None
        if generators is not None:
            pixels = repeat_to_batch(pixels, call.batch, "images")
        first = torch.cat([latents_of(self.vae.encode(p[None]), generators[i] if generators else call.generator)
                           for i, p in enumerate(pixels)]).to(dtype)
        scale = self.vae_scaling_factor_image
        first = first / scale if self.vae.config.get("invert_scale_latents", False) else first * scale
        first = repeat_to_batch(first, call.batch, "images").permute(0, 2, 1, 3, 4)
        padding = first.new_zeros(first.shape[0], call.latent_frames - 1, *first.shape[2:])
        return torch.cat([first, padding], dim=1)

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        cond = super()._encode(call, negative)
        # encoded here, before the engine draws the noise: the reference takes the image's sample first
        image_latents = self._image_latents(call, cond.positive["prompt_embeds"].dtype)
        for side in (cond.positive, cond.negative or {}) if negative else (cond.positive,):
            side["image_latents"] = image_latents
        return cond

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        b, f, c, h, w = super()._latent_shape(call)
        return b, f, c // 2, h, w

    def _evaluate(self, model_input, timestep, cond, **kwargs):
        if self.transformer.config.ofs_embed_dim is not None:
            kwargs["ofs"] = model_input.new_full((1,), 2.0)
        return super()._evaluate(model_input, timestep, cond, **kwargs)

    @torch.no_grad()
    def __call__(
        self,
        image=None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int = 49,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        guidance_scale: float = 6,
        use_dynamic_cfg: bool = False,
        num_videos_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        max_sequence_length: int = 226,
    ):
        return self._generate(locals())


class CogVideoXFunControlPipeline(CogVideoXPipeline):
    """CogVideoX-Fun control (Alibaba PAI's CogVideoX-Fun): text-to-video guided by a control video (depth, pose,
    edges, ...).  The control video's VAE latents (posterior mode, times ``scaling_factor``) are concatenated to
    the noisy latents along the channels at every step; the transformer takes twice the latent channels."""

    pipeline_family = "cogvideox-fun-control"
    _channel_latents = ("control_video_latents",)

    def _prepare(self, call: SimpleNamespace) -> None:
        video, given = call.control_video, call.control_video_latents
        if video is None and given is None:
            raise ValueError("control_video is required: a list of frames (PIL images, arrays or tensors), a list of "
                             "such videos or a tensor; or pass control_video_latents")
        if video is not None and given is not None:
            raise ValueError("pass either control_video or control_video_latents, not both")
        if video is not None and isinstance(video, (list, tuple)) and len(video) == 0:
            raise ValueError("control_video is empty: pass at least one frame")
        if given is not None and (not isinstance(given, torch.Tensor) or given.ndim != 5):
            shape = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
            raise ValueError("control_video_latents must be a (batch, latent frames, channels, height / 8, width / 8) "
                             f"tensor, got {shape}")
        call.num_frames = 1  # set from the control video (or its latents) below, once the size is known
        super()._prepare(call)
        if given is not None:
            f = self.vae_scale_factor_spatial
            expected = (self.transformer.config.in_channels // 2, call.height // f, call.width // f)
            if tuple(given.shape[2:]) != expected:
                raise ValueError(f"control_video_latents has shape {tuple(given.shape)}; for height={call.height}, "
                                 f"width={call.width} it must be (batch, frames, {', '.join(map(str, expected))})")
            call.control_pixels, call.latent_frames = None, given.shape[1]
        else:
            call.control_pixels = self.video_processor.preprocess_video(video, height=call.height, width=call.width)
            frames = call.control_pixels.shape[2]
            call.latent_frames = self._check_frame_count(f"control_video has {frames} frames; it", frames)
        pt = self.transformer.config.patch_size_t
        if pt is not None and call.latent_frames % pt:
            raise ValueError(f"the control video gives {call.latent_frames} latent frames, which patch_size_t={pt} does "
                             "not divide; pass 1 + 4k frames with a multiple of patch_size_t latent frames")
        call.additional_frames = 0

    def _control_latents(self, call: SimpleNamespace, dtype: torch.dtype) -> torch.Tensor:
        """``(B, F, C, h, w)``: each control video's posterior mode, times ``scaling_factor``, one row per video."""
        if call.control_pixels is None:
            control = call.control_video_latents.to(device=call.device, dtype=dtype)
        else:
            pixels = call.control_pixels.to(device=call.device, dtype=self.vae.dtype)
            control = torch.cat([latents_of(self.vae.encode(v[None]), sample_mode="argmax") for v in pixels])
            control = (control * self.vae.config.scaling_factor).to(dtype).permute(0, 2, 1, 3, 4)
        if control.shape[0] not in (1, call.batch):
            raise ValueError(f"got {control.shape[0]} control videos for a batch of {call.batch} (prompts x "
                             "num_videos_per_prompt); pass one control video or one per generated video")
        return repeat_to_batch(control, call.batch, "control videos")

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        cond = super()._encode(call, negative)
        control = self._control_latents(call, cond.positive["prompt_embeds"].dtype)
        for side in (cond.positive, cond.negative) if negative else (cond.positive,):
            side["control_video_latents"] = control
        return cond

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        b, f, c, h, w = super()._latent_shape(call)
        return b, f, c // 2, h, w

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        control_video: list | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        guidance_scale: float = 6,
        use_dynamic_cfg: bool = False,
        num_videos_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        control_video_latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        max_sequence_length: int = 226,
    ):
        return self._generate(locals())
