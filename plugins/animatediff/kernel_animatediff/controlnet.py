"""AnimateDiff guided by ControlNets: one control image per frame (``conditioning_frames``).

:class:`AnimateDiffControlNetPipeline` is a composition: the text-to-video :class:`AnimateDiffPipeline` (its
loop, prompt encoding, video grid and decoding) plus :class:`kernel_controlnet.mixin.ControlMixinBase` (the
``controlnet`` component, ``controlnet_conditioning_scale``, ``control_guidance_start`` / ``_end``, multi-net
models) and a ControlNet hook that sees the video latents as a batch of frames.

The 2-D ControlNets run on every frame: :class:`FrameControlNetHook` flattens the ``(N, C, F, h, w)`` model
input to ``(N * F, C, h, w)`` (video-major, as Diffusers does), repeats each video's prompt rows once per frame
and reads the per-frame control pixels, ``(N * F, 3, H, W)``; the UNetMotionModel takes the resulting
per-frame residuals.  Guess mode follows the SD ControlNet pipelines: with classifier-free guidance the nets
see only the positive rows and the negative rows get zero residuals (Diffusers 0.42's AnimateDiff variant
fails on that combination).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch

from kernel.engine import Evaluation
from kernel_controlnet.hook import ControlNetHook, controlnets_of
from kernel_controlnet.mixin import ControlMixinBase, check_scales_and_windows
from kernel_video import VideoProcessor

from kernel_animatediff.pipelines import AnimateDiffPipeline


class FrameControlNetHook(ControlNetHook):
    """:class:`~kernel_controlnet.hook.ControlNetHook` for 5-D video latents: the nets run on the frames
    flattened into the batch, with each video's conditioning repeated per frame."""

    def __call__(self, pipe: Any, evaluation: Evaluation) -> None:
        x = evaluation.model_input
        if x.ndim != 5:
            return super().__call__(pipe, evaluation)
        n, c, frames, h, w = x.shape
        flat = x.transpose(1, 2).reshape(n * frames, c, h, w)
        cond = {k: v.repeat_interleave(frames, dim=0) if isinstance(v, torch.Tensor) and v.shape[0] == n else v
                for k, v in evaluation.cond.items()}
        # The same kwargs dict: the residuals land in the real evaluation.
        super().__call__(pipe, Evaluation(flat, evaluation.timestep, cond, evaluation.shared, evaluation.kwargs,
                                          evaluation.passes, evaluation.step))


def _frame_count(video: Any) -> int | None:
    """Frames in one control video (a list of frames or a 4-D array / tensor), None when it is not one."""
    if isinstance(video, (list, tuple)):
        return len(video)
    if isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim == 4:
        return int(video.shape[0])
    if isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim == 5:
        return int(video.shape[1] if isinstance(video, np.ndarray) else video.shape[2])
    return None


class AnimateDiffControlNetPipeline(ControlMixinBase, AnimateDiffPipeline):
    """Text-to-video with an SD 1.5 UNet, a motion adapter and one or more ControlNets, each given one control
    image per frame."""

    _hook_class = FrameControlNetHook
    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["feature_extractor", "image_encoder"]

    def __init__(self, vae, text_encoder, tokenizer, unet, motion_adapter, controlnet, scheduler,
                 feature_extractor=None, image_encoder=None) -> None:
        super().__init__(vae, text_encoder, tokenizer, unet, motion_adapter, scheduler, feature_extractor,
                         image_encoder)
        self._set_controlnet(controlnet)
        self.control_video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True,
                                                      do_normalize=False)

    @property
    def _control_image_name(self) -> str:
        return "conditioning_frames"

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
        conditioning_frames: list | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        decode_chunk_size: int = 16,
    ):
        return self._generate(locals())

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        self._require_controlnet()
        call.control_images = self._control_image_list(call)  # one video per control
        super()._prepare(call)  # size, frames and prompt checks
        self._check_control(call)

    def _check_control(self, call: SimpleNamespace) -> None:
        name, n = self._control_image_name, len(call.control_images)
        for video in call.control_images:
            count = _frame_count(video)
            if count is None:
                raise ValueError(f"{name}: each ControlNet needs a video of control images (a list of frames or a "
                                 f"4-D / 5-D array or tensor), got {type(video).__name__}")
            if count != call.num_frames:
                raise ValueError(f"{name} has {count} frames for num_frames={call.num_frames}; give one control "
                                 "image per frame")
        check_scales_and_windows(call, n)
        if not isinstance(call.guess_mode, bool):
            raise ValueError(f"guess_mode must be True or False, got {call.guess_mode!r}")
        call.control_guess_mode = call.guess_mode or bool(controlnets_of(self.controlnet)[0].config.global_pool_conditions)

    def _control_frames(self, call: SimpleNamespace, video: Any) -> torch.Tensor:
        """One control video -> ``(batch * F, 3, H, W)`` pixels in ``[0, 1]``, video-major, one video per generated one."""
        x = self.control_video_processor.preprocess_video(video, height=call.height, width=call.width)
        x = x.to(torch.float32).permute(0, 2, 1, 3, 4)  # (V, F, C, H, W)
        prompts = call.batch // call.num_images_per_prompt
        if x.shape[0] not in (1, prompts):
            raise ValueError(f"{self._control_image_name}: {x.shape[0]} control videos for {prompts} prompt(s); give "
                             "1 video or one per prompt")
        x = x.repeat_interleave(call.batch if x.shape[0] == 1 else call.num_images_per_prompt, dim=0)
        return x.flatten(0, 1)

    def _late_conditioning(self, call: SimpleNamespace, cond, latents: torch.Tensor) -> None:
        super()._late_conditioning(call, cond, latents)
        dtype = self.controlnet.dtype
        for key, video in zip(self._control_keys(len(call.control_images)), call.control_images):
            cond.shared[key] = self._control_frames(call, video).to(device=call.device, dtype=dtype)
        self._control_hook.inputs = self._control_inputs(call, guess_mode=call.control_guess_mode)
