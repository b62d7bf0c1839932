"""Diffusers' SDXL ControlNet-Union pipelines, as compositions: the SDXL pipeline of the task plus
:class:`ControlNetUnionMixin` (the UNet ControlNet mixin with union nets, control modes and
:class:`~kernel_controlnet.hook.ControlNetUnionHook`), with Diffusers' constructor and call signatures.

``control_image`` / ``control_mode``: with one ``ControlNetUnionModel``, one image per control mode (a single
image and int, or lists of equal length; every image goes through the one net, with its own scale and window);
with a ``MultiControlNetUnionModel`` (``controlnet=[a, b]``), one image and one mode per net.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import torch

from kernel_sd import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

from kernel_controlnet.controlnet_union import ControlNetUnionModel
from kernel_controlnet.hook import ControlInputs, ControlNetUnionHook, controlnets_of
from kernel_controlnet.mixin import ControlNetMixin
from kernel_controlnet.multicontrolnet import MultiControlNetUnionModel
from kernel_controlnet.pipelines import _XLControlNet, _XLImageControlNet

class ControlNetUnionMixin(ControlNetMixin):
    """The UNet ControlNet mixin for union nets: ``control_image`` is always the control argument, each control
    has a ``control_mode``, and :class:`ControlNetUnionHook` runs each net on all of its controls at once.

    Guess mode also works with classifier-free guidance (Diffusers' union pipelines fail there: their control
    modes are not cut to the positive rows)."""

    _single_net = ControlNetUnionModel
    _multi_net = MultiControlNetUnionModel
    _hook_class = ControlNetUnionHook

    @property
    def _control_image_name(self) -> str:
        return "control_image"

    def _control_image_list(self, call: SimpleNamespace) -> list:
        images = call.control_image
        if images is None:
            raise ValueError("control_image is required: one control image per control mode (a PIL image, array or "
                             "tensor, or a list of them)")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("control_image is an empty list; give one control image per control mode")
        nets = controlnets_of(self.controlnet)
        if isinstance(self.controlnet, self._multi_net):
            if len(images) != len(nets):
                raise ValueError(f"control_image has {len(images)} entries for {len(nets)} ControlNetUnionModels; give "
                                 "one control image per net")
            call.control_nets = list(range(len(nets)))
        else:
            call.control_nets = [0] * len(images)
        self._callback_tensor_inputs = self._with_control_callback_names(len(images))
        return images

    def _check_control(self, call: SimpleNamespace) -> None:
        super()._check_control(call)
        modes = call.control_mode
        n = len(call.control_images)
        if modes is None:
            raise ValueError(f"control_mode is required: one int per control image ({n}), the kind of control each "
                             "is (the checkpoint's model card lists its modes)")
        modes = list(modes) if isinstance(modes, (list, tuple)) else [modes]
        if len(modes) != n:
            raise ValueError(f"control_mode has {len(modes)} entries for {n} control image(s); give one mode per image")
        nets = controlnets_of(self.controlnet)
        for k, mode in enumerate(modes):
            count = nets[call.control_nets[k]].config.num_control_type
            if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode < count:
                raise ValueError(f"control_mode entry {k} is {mode!r}; the net takes ints in [0, {count})")
        call.control_modes = modes

    def _control_inputs(self, call: SimpleNamespace, **extra: Any) -> ControlInputs:
        return super()._control_inputs(call, modes=call.control_modes,
                                       from_multi=isinstance(self.controlnet, self._multi_net), **extra)


class StableDiffusionXLControlNetUnionPipeline(ControlNetUnionMixin, _XLControlNet, StableDiffusionXLPipeline):
    """SDXL text-to-image guided by a ControlNet-Union's control images and modes."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "control_image"]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        control_image=None,
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
        controlnet_conditioning_scale: float | list[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        control_mode: int | list[int] | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
    ):
        return self._generate(locals())


class StableDiffusionXLControlNetUnionImg2ImgPipeline(ControlNetUnionMixin, _XLImageControlNet,
                                                      StableDiffusionXLImg2ImgPipeline):
    """SDXL image-to-image guided by a ControlNet-Union."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "control_image"]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image=None,
        control_image=None,
        height: int | None = None,
        width: int | None = None,
        strength: float = 0.8,
        num_inference_steps: int = 50,
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
        controlnet_conditioning_scale: float | list[float] = 0.8,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        control_mode: int | list[int] | None = None,
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


class StableDiffusionXLControlNetUnionInpaintPipeline(ControlNetUnionMixin, _XLImageControlNet,
                                                      StableDiffusionXLInpaintPipeline):
    """SDXL inpainting guided by a ControlNet-Union (the negative micro-conditioning repeats the positive sizes,
    as in Diffusers)."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "mask",
                               "masked_image_latents", "control_image"]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image=None,
        mask_image=None,
        control_image=None,
        height: int | None = None,
        width: int | None = None,
        padding_mask_crop: int | None = None,
        strength: float = 0.9999,
        num_inference_steps: int = 50,
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
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        control_mode: int | list[int] | None = None,
        guidance_rescale: float = 0.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
    ):
        return self._generate(locals())
