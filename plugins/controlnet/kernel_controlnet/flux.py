"""Diffusers' Flux ControlNet pipelines as compositions: the Flux pipeline of the task (its loop, true CFG,
packing and image-to-image / inpainting) plus :class:`FluxControlNetMixin` and the Flux hook
(:class:`kernel_controlnet.hook.FluxControlNetHook`).

The control image is encoded with the VAE (sampled with the call's ``generator``, before the starting
latents are drawn, as in Diffusers) and packed into 2x2 tokens; nets with their own image encoder (XLabs',
``conditioning_embedding_channels``) take the image itself.  Union ControlNets take ``control_mode`` (the
control type: one int per control).  A multi-net model holding a single union net takes a list of control
images and modes, each run through that net and summed.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from kernel_autoencoders.image_processor import VaeImageProcessor
from kernel_flux import FluxImg2ImgPipeline, FluxInpaintPipeline, FluxPipeline, pack_latents

from kernel_controlnet.controlnet_flux import FluxControlNetModel, FluxMultiControlNetModel
from kernel_controlnet.hook import FluxControlNetHook, controlnets_of
from kernel_controlnet.mixin import ControlMixinBase, control_pixels, default_size_from_tensor

#: Arguments of FluxPipeline that Diffusers' Flux ControlNet image-to-image / inpainting signatures lack.
_FLUX_DEFAULTS = {"negative_prompt": None, "negative_prompt_2": None, "negative_prompt_embeds": None,
                  "negative_pooled_prompt_embeds": None, "true_cfg_scale": 1.0}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class FluxControlNetMixin(ControlMixinBase):
    """The Flux variant of :class:`kernel_controlnet.mixin.ControlMixinBase` (see the module docstring)."""

    _single_net = FluxControlNetModel
    _multi_net = FluxMultiControlNetModel
    _hook_class = FluxControlNetHook
    _one_net_many_controls = True

    def _set_controlnet(self, controlnet: Any) -> None:
        super()._set_controlnet(controlnet)
        self.control_image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor * 2,
                                                         do_convert_rgb=True)

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        for name, value in _FLUX_DEFAULTS.items():
            setattr(call, name, getattr(call, name, value))
        self._require_controlnet()
        call.control_images = self._control_image_list(call)
        default_size_from_tensor(call)
        super()._prepare(call)
        self._check_control(call)
        call.control_modes = self._control_modes(call)

    def _control_modes(self, call: SimpleNamespace) -> list[int | None]:
        """``control_mode`` as one entry per control, checked against each union net's ``num_mode``."""
        mode, n = call.control_mode, len(call.control_images)
        if isinstance(self.controlnet, FluxMultiControlNetModel):
            modes = list(mode) if isinstance(mode, (list, tuple)) else [mode] * n
            if len(modes) != n:
                raise ValueError(f"control_mode has {len(modes)} entries for {n} control images; give one mode per "
                                 "control image (None for nets that are not union ControlNets)")
        elif isinstance(mode, (list, tuple)):
            raise ValueError(f"control_mode must be an int or None for a single FluxControlNetModel, got {mode!r}")
        else:
            modes = [mode]
        nets = controlnets_of(self.controlnet)
        for m, k in zip(modes, call.control_nets):
            if m is not None and not _is_int(m):
                raise ValueError(f"control_mode entries must be ints or None, got {m!r}")
            count = nets[k].config.num_mode
            if count is not None and (m is None or not 0 <= m < count):
                raise ValueError(f"control_mode: a union ControlNet (num_mode={count}) needs a mode in [0, {count}) "
                                 f"for each of its control images, got {m!r}")
        return modes

    def _encode(self, call: SimpleNamespace, negative: bool):
        cond = super()._encode(call, negative)
        # The controls are drawn here, after the prompt and before the starting latents, as in Diffusers.
        nets = controlnets_of(self.controlnet)
        for key, k, image in zip(self._control_keys(len(call.control_images)), call.control_nets, call.control_images):
            x = control_pixels(call, image, "control_image", self.control_image_processor)
            x = x.to(device=call.device, dtype=self.vae.dtype)
            if not nets[k].uses_image:
                x = pack_latents(self.vae.normalize_latents(self._encode_vae(x, call.generator)))
            cond.shared[key] = x.to(self.controlnet.dtype)
        return cond

    def _late_conditioning(self, call: SimpleNamespace, cond, latents: torch.Tensor) -> None:
        super()._late_conditioning(call, cond, latents)
        self._control_hook.release()
        # Union modes as device tensors once per call (the nets expand them to the batch).
        modes = [None if m is None else torch.tensor([[m]], dtype=torch.long, device=call.device)
                 for m in call.control_modes]
        self._control_hook.inputs = self._control_inputs(call, modes=modes, conditioning=cond)

    def _decode(self, latents: torch.Tensor, call: SimpleNamespace):
        self._control_hook.release()
        return super()._decode(latents, call)


class _FluxControlNet(FluxControlNetMixin):
    def __init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer, controlnet,
                 image_encoder=None, feature_extractor=None) -> None:
        super().__init__(scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                         image_encoder, feature_extractor)
        self._set_controlnet(controlnet)


class FluxControlNetPipeline(_FluxControlNet, FluxPipeline):
    """Flux text-to-image guided by control images (true classifier-free guidance with ``true_cfg_scale``)."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "control_image"]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        true_cfg_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.0,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        control_image=None,
        control_mode: int | list[int] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        negative_ip_adapter_image=None,
        negative_ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        max_sequence_length: int = 512,
    ):
        """``guidance_scale`` (default 7.0, as Diffusers' ControlNet pipeline) is Flux-dev's embedded guidance."""
        return self._generate(locals())

    def _prepare(self, call: SimpleNamespace) -> None:
        from kernel.pipeline_utils import check_unsupported

        check_unsupported(type(self).__name__, ip_adapter_image=call.ip_adapter_image,
                          ip_adapter_image_embeds=call.ip_adapter_image_embeds,
                          negative_ip_adapter_image=call.negative_ip_adapter_image,
                          negative_ip_adapter_image_embeds=call.negative_ip_adapter_image_embeds)
        super()._prepare(call)


class FluxControlNetImg2ImgPipeline(_FluxControlNet, FluxImg2ImgPipeline):
    """Flux image-to-image guided by control images: ``image`` noised to ``strength``, then denoised."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "control_image"]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image=None,
        control_image=None,
        height: int | None = None,
        width: int | None = None,
        strength: float = 0.6,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.0,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        control_mode: int | list[int] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
        max_sequence_length: int = 512,
    ):
        return self._generate(locals())


class FluxControlNetInpaintPipeline(_FluxControlNet, FluxInpaintPipeline):
    """Flux inpainting guided by control images: the white region of ``mask_image`` is repainted."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "control_image", "mask", "masked_image_latents"]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image=None,
        mask_image=None,
        masked_image_latents=None,
        control_image=None,
        height: int | None = None,
        width: int | None = None,
        strength: float = 0.6,
        padding_mask_crop: int | None = None,
        sigmas: list[float] | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float = 7.0,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        control_mode: int | list[int] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
        max_sequence_length: int = 512,
    ):
        return self._generate(locals())
