"""AnimateDiff guided by SparseCtrl (arXiv:2311.16933): a few condition images pinned to chosen frames.

:class:`AnimateDiffSparseControlNetPipeline` is a composition: the text-to-video :class:`AnimateDiffPipeline` (its
loop, prompt encoding, video grid, FreeInit / FreeNoise and decoding) plus
:class:`kernel_controlnet.mixin.ControlMixinBase` (the ``controlnet`` component, ``controlnet_conditioning_scale``,
``control_guidance_start`` / ``_end``) and :class:`SparseControlNetHook`, which runs the
:class:`~kernel_animatediff.sparse_controlnet.SparseControlNetModel` on the whole video latents.

The call's ``conditioning_frames`` (a few images) go to the frames ``controlnet_frame_indices`` (default ``[0]``)
of an otherwise empty condition video; a mask marks those frames.  For nets with
``use_simplified_condition_embedding`` (RGB SparseCtrl) the images are VAE latents (sampled from the posterior
with the global random state, after the prompt encoding, as Diffusers does), else pixels in ``[0, 1]``.  One
condition video serves every generated video.

As in the other UNet ControlNet pipelines, guess mode with classifier-free guidance runs the net on the positive
rows only and gives the negative rows zero residuals (Diffusers 0.42 fails on that combination).  Beyond
Diffusers' signature: ``control_guidance_start`` / ``_end`` (default: every step, Diffusers' behaviour),
``decode_chunk_size`` and ``num_videos_per_prompt`` (Diffusers 0.42 forces 1).
FreeInit is available as in Diffusers; FreeNoise is not (Diffusers' SparseCtrl pipeline lacks it too).  Diffusers silently ignores
condition images beyond the indices; here their counts must be equal.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch

from kernel.pipeline_utils import latents_of
from kernel_autoencoders.image_processor import VaeImageProcessor
from kernel_controlnet.hook import ControlNetHook
from kernel_controlnet.mixin import ControlMixinBase, check_scales_and_windows
from kernel_controlnet.multicontrolnet import MultiControlNetModel

from kernel_animatediff.pipelines import AnimateDiffPipeline
from kernel_animatediff.sparse_controlnet import SparseControlNetModel


class SparseControlNetHook(ControlNetHook):
    """:class:`~kernel_controlnet.hook.ControlNetHook` for a SparseControlNetModel: the net takes the 5-D latents and
    the condition video, whose last channel is the frame mask, and returns residuals per frame."""

    def _run(self, nets: list, scales: list[float], active: list[int], sample: torch.Tensor, timestep: torch.Tensor,
             text: torch.Tensor, images: dict[int, torch.Tensor], added_cond_kwargs: dict | None) -> list:
        outputs = []
        for k in active:
            video = images[k]
            outputs.append(nets[self.inputs.net_of(k)](
                sample, timestep, text, video[:, :-1], conditioning_scale=scales[k], conditioning_mask=video[:, -1:],
                guess_mode=self.inputs.guess_mode, return_dict=False))
        return outputs

    def _spread(self, x: torch.Tensor, passes, kept: list[int], rows: int) -> torch.Tensor:
        # residuals have one row per frame: the kept passes' share of them, not the videos' count
        return ControlNetHook._spread(x, passes, kept, x.shape[0] // len(kept))


def _is_image(x: Any) -> bool:
    return isinstance(x, (PIL.Image.Image, np.ndarray, torch.Tensor))


class AnimateDiffSparseControlNetPipeline(ControlMixinBase, AnimateDiffPipeline):
    """Text-to-video with an SD 1.5 UNet, a motion adapter and a SparseControlNetModel given a few condition images
    for chosen frames (see the module docstring)."""

    _single_net = SparseControlNetModel
    _hook_class = SparseControlNetHook

    def __init__(self, vae, text_encoder, tokenizer, unet, motion_adapter, controlnet, scheduler,
                 feature_extractor=None, image_encoder=None) -> None:
        if isinstance(controlnet, (list, tuple, MultiControlNetModel)):
            raise ValueError("AnimateDiffSparseControlNetPipeline takes one SparseControlNetModel as controlnet, got "
                             f"{type(controlnet).__name__}")
        super().__init__(vae, text_encoder, tokenizer, unet, motion_adapter, scheduler, feature_extractor,
                         image_encoder)
        self._set_controlnet(controlnet)
        self.control_image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True,
                                                         do_normalize=False)

    @property
    def _control_image_name(self) -> str:
        return "conditioning_frames"

    def enable_free_noise(self, *args: Any, **kwargs: Any) -> None:
        """Not offered: the SparseControlNetModel's motion modules attend over all frames (Diffusers' SparseCtrl
        pipeline has no FreeNoise either)."""
        raise ValueError("FreeNoise is not available with AnimateDiffSparseControlNetPipeline: the SparseControlNetModel's "
                         "motion modules attend over all frames; use AnimateDiffPipeline for FreeNoise")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int = 16,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_videos_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        conditioning_frames: list | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        controlnet_frame_indices: list[int] = [0],  # noqa: B006 - Diffusers' default
        guess_mode: bool = False,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        decode_chunk_size: int = 16,
    ):
        return self._generate(locals())

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        self._require_controlnet()
        super()._prepare(call)  # size, frames and prompt checks
        name = self._control_image_name
        frames = call.conditioning_frames
        if frames is None:
            raise ValueError(f"{name} is required: the condition images (a PIL image, array or tensor, or a list of "
                             "them) for the frames in controlnet_frame_indices")
        if not (_is_image(frames) or (isinstance(frames, (list, tuple)) and frames and all(map(_is_image, frames)))):
            raise ValueError(f"{name} must be a PIL image, a numpy array, a torch tensor or a non-empty list of them, "
                             f"got {type(frames).__name__}")
        pixels = self.control_image_processor.preprocess(frames, height=call.height, width=call.width)
        if pixels.min() < 0 or pixels.max() > 1:
            raise ValueError(f"{name} must hold pixel values in [0, 1] (tensors and arrays are used as given), got "
                             f"values in [{pixels.min().item():.3g}, {pixels.max().item():.3g}]")
        call.control_pixels = pixels.to(torch.float32)  # (n, 3, H, W)
        call.control_indices = self._frame_indices(call, pixels.shape[0])
        call.control_images, call.control_nets = [frames], [0]
        check_scales_and_windows(call, 1)
        if not isinstance(call.guess_mode, bool):
            raise ValueError(f"guess_mode must be True or False, got {call.guess_mode!r}")
        call.control_guess_mode = call.guess_mode or bool(self.controlnet.config.global_pool_conditions)

    def _frame_indices(self, call: SimpleNamespace, count: int) -> list[int]:
        indices = call.controlnet_frame_indices
        if not isinstance(indices, (list, tuple)) or not indices or \
                any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in indices):
            raise ValueError(f"controlnet_frame_indices must be a non-empty list of frame numbers (ints), got {indices!r}")
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < call.num_frames]
        if bad:
            raise ValueError(f"controlnet_frame_indices {bad} are outside the video: num_frames={call.num_frames} "
                             f"takes indices 0 to {call.num_frames - 1}")
        if len(set(indices)) != len(indices):
            raise ValueError(f"controlnet_frame_indices {indices} repeats a frame; give each frame once")
        if count != len(indices):
            raise ValueError(f"{self._control_image_name} has {count} image(s) for {len(indices)} "
                             f"controlnet_frame_indices {indices}; give one condition image per index")
        return indices

    def _encode(self, call: SimpleNamespace, negative: bool):
        cond = super()._encode(call, negative)
        call.control_video = self._condition_video(call)  # after the prompts, as Diffusers draws its VAE sample
        return cond

    def _condition_video(self, call: SimpleNamespace) -> torch.Tensor:
        """``(1, C + 1, F, h, w)``: the condition images (VAE latents or pixels) at their frames, zeros elsewhere, and
        the frame mask as the last channel."""
        net = self.controlnet
        pixels = call.control_pixels.to(device=call.device, dtype=net.dtype)
        if net.config.use_simplified_condition_embedding:
            encoded = latents_of(self.vae.encode((2 * pixels - 1).to(self.vae.dtype)))
            images = (encoded * self.vae.config.scaling_factor).to(net.dtype)
        else:
            images = pixels
        n, c, h, w = images.shape
        video = images.new_zeros(1, c + 1, call.num_frames, h, w)
        video[0, :c, call.control_indices] = images.transpose(0, 1)
        video[0, c:, call.control_indices] = 1
        return video

    def _late_conditioning(self, call: SimpleNamespace, cond, latents: torch.Tensor) -> None:
        super()._late_conditioning(call, cond, latents)
        key = self._control_keys(1)[0]
        cond.shared[key] = call.control_video.expand(call.batch, *call.control_video.shape[1:])
        self._control_hook.inputs = self._control_inputs(call, guess_mode=call.control_guess_mode)


__all__ = ["AnimateDiffSparseControlNetPipeline", "SparseControlNetHook"]
