"""Diffusers' SD3 ControlNet pipelines as compositions: ``StableDiffusion3Pipeline`` (its loop, guidance and
conditioning) plus :class:`SD3ControlNetMixin` and the MMDiT hook
(:class:`kernel_controlnet.hook.MMDiTControlNetHook`).

The control is the control image's VAE latents, encoded when the prompt is, before the starting noise.  As in
Diffusers, that encoding samples the VAE posterior with the *global* torch RNG (the call's ``generator`` is
not used): seed it with ``torch.manual_seed`` for repeatable images.  With classifier-free guidance the
control image is encoded once per guidance half, so the negative and positive passes see different samples.

* ``StableDiffusion3ControlNetPipeline``: ``control_image`` (edges, depth, ...).  Nets saved with
  ``force_zeros_for_pooled_projection`` (the SD3.0 ones) get zeros for the pooled text and their control
  latents without the VAE's shift; SD3.5 nets without a position embedding borrow the transformer's.
* ``StableDiffusion3ControlNetInpaintingPipeline``: inpainting by ControlNet (alimama-creative's): the
  control is the latents of ``control_image`` with the ``control_mask`` region (white) blanked, plus the
  kept-region mask; the net always gets zeros for the pooled text.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from kernel_autoencoders.image_processor import VaeImageProcessor
from kernel.pipeline_utils import latents_of
from kernel_sd3 import StableDiffusion3Pipeline

from kernel_controlnet.controlnet_sd3 import SD3ControlNetModel, SD3MultiControlNetModel
from kernel_controlnet.hook import MMDiTControlNetHook, controlnets_of
from kernel_controlnet.mixin import ControlMixinBase, control_pixels, default_size_from_tensor


class SD3ControlNetMixin(ControlMixinBase):
    """The SD3 / SD3.5 variant of :class:`kernel_controlnet.mixin.ControlMixinBase` (see the module docstring)."""

    _single_net = SD3ControlNetModel
    _multi_net = SD3MultiControlNetModel
    _hook_class = MMDiTControlNetHook
    #: Whether the nets always get zeros for the pooled text (Diffusers' inpainting pipeline).
    _control_pooled_zeros = False

    def _set_controlnet(self, controlnet: Any) -> None:
        super()._set_controlnet(controlnet)
        self._control_hook.zero_pooled = self._control_pooled_zeros
        if self.controlnet is not None and self.transformer is not None:
            for net in controlnets_of(self.controlnet):
                if not net.config.use_pos_embed:
                    net.set_pos_embed_from_transformer(self.transformer)
        self.control_image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True)

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        # StableDiffusion3Pipeline's arguments that Diffusers' ControlNet signatures lack.
        for name in ("mu", "skip_guidance_layers"):
            setattr(call, name, getattr(call, name, None))
        self._require_controlnet()
        call.control_images = self._control_image_list(call)
        default_size_from_tensor(call)
        super()._prepare(call)
        self._check_control(call)

    def _encode(self, call: SimpleNamespace, negative: bool):
        cond = super()._encode(call, negative)
        # The control latents are drawn here, after the prompt and before the starting noise, as in Diffusers.
        nets = controlnets_of(self.controlnet)
        for key, k, image in zip(self._control_keys(len(call.control_images)), call.control_nets, call.control_images):
            positive, negative_latents = self._control_latents(call, nets[k], image, negative)
            cond.positive[key] = positive
            if cond.negative is not None:
                cond.negative[key] = negative_latents
        pooled = getattr(call, "controlnet_pooled_projections", None)
        if pooled is not None:
            pooled = self._per_image(call, pooled, "controlnet_pooled_projections")
            cond.positive["controlnet_pooled_projections"] = pooled
            if cond.negative is not None:
                cond.negative["controlnet_pooled_projections"] = pooled
        return cond

    def _per_image(self, call: SimpleNamespace, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            raise ValueError(f"{name} must be a (batch, dim) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        prompts = call.batch // call.num_images_per_prompt
        if x.shape[0] not in (prompts, call.batch):
            raise ValueError(f"{name} has {x.shape[0]} rows; give one per prompt ({prompts}) or per image "
                             f"({call.batch})")
        if x.shape[0] != call.batch:
            x = x.repeat_interleave(call.num_images_per_prompt, dim=0)
        return x.to(device=call.device, dtype=self.controlnet.dtype)

    def _control_latents(self, call: SimpleNamespace, net: SD3ControlNetModel, image: Any, negative: bool):
        """(positive rows, negative rows or None): the control image's latents, one sample per guidance half."""
        x = control_pixels(call, image, self._control_image_name, self.control_image_processor)
        x = x.to(device=call.device, dtype=self.vae.dtype)
        if negative:
            x = torch.cat([x, x])
        z = latents_of(self.vae.encode(x), None)  # the global RNG, as the reference
        # SD3.0 ControlNets (force_zeros_for_pooled_projection) were trained on latents without the VAE's shift.
        z = z * self.vae.config.scaling_factor if net.config.force_zeros_for_pooled_projection \
            else self.vae.normalize_latents(z)
        z = z.to(self.controlnet.dtype)
        return (z[call.batch:], z[:call.batch]) if negative else (z, None)

    def _late_conditioning(self, call: SimpleNamespace, cond, latents: torch.Tensor) -> None:
        super()._late_conditioning(call, cond, latents)
        self._control_hook.inputs = self._control_inputs(call)


class _SD3ControlNet(SD3ControlNetMixin):
    def __init__(self, transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                 text_encoder_3, tokenizer_3, controlnet, image_encoder=None, feature_extractor=None) -> None:
        super().__init__(transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                         text_encoder_3, tokenizer_3, image_encoder, feature_extractor)
        self._set_controlnet(controlnet)


class StableDiffusion3ControlNetPipeline(_SD3ControlNet, StableDiffusion3Pipeline):
    """SD3 / SD3.5 text-to-image guided by control images (edges, depth, pose, tiles, blur, ...)."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds"]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.0,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        control_image=None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        controlnet_pooled_projections: torch.Tensor | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - Diffusers' default
        max_sequence_length: int = 256,
    ):
        return self._generate(locals())


class StableDiffusion3ControlNetInpaintingPipeline(_SD3ControlNet, StableDiffusion3Pipeline):
    """SD3 inpainting by ControlNet: the white region of ``control_mask`` in ``control_image`` is repainted."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds"]
    _control_pooled_zeros = True

    def _prepare(self, call: SimpleNamespace) -> None:
        super()._prepare(call)
        if call.control_mask is None:
            raise ValueError("control_mask is required: white pixels are repainted, black ones kept (a PIL image, "
                             "array or tensor)")

    def _control_latents(self, call: SimpleNamespace, net: SD3ControlNetModel, image: Any, negative: bool):
        """The masked image's latents (the region to repaint set to -1 first) and the kept-region mask, on the
        latent grid; both guidance halves share one sample."""
        x = control_pixels(call, image, "control_image", self.control_image_processor)
        mask = control_pixels(call, call.control_mask, "control_mask", self.mask_processor)
        if mask.shape[0] != x.shape[0]:
            raise ValueError(f"control_mask gives {mask.shape[0]} masks for {x.shape[0]} control images; give 1 mask "
                             "or one per control image")
        x = x.to(device=call.device, dtype=self.vae.dtype)
        mask = mask.to(device=call.device, dtype=self.vae.dtype)
        masked = x.masked_fill((mask > 0.5).expand_as(x), -1.0)
        z = self.vae.normalize_latents(latents_of(self.vae.encode(masked), None))  # the global RNG
        f = self.vae_scale_factor
        kept = 1 - F.interpolate(mask, size=(call.height // f, call.width // f))
        control = torch.cat([z, kept.to(z.dtype)], dim=1).to(self.controlnet.dtype)
        return control, (control if negative else None)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.0,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        control_image=None,
        control_mask=None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        controlnet_pooled_projections: torch.Tensor | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006
        max_sequence_length: int = 256,
    ):
        return self._generate(locals())
