"""What turns a family pipeline into its ControlNet variant: the ``controlnet`` component, the control
arguments of the call, the control images, and the hook (:class:`kernel_controlnet.hook.ControlNetHook`).

The family class keeps its loop, tasks and guidance; this mixin only

* registers ``controlnet`` (a list or tuple of nets becomes a :class:`MultiControlNetModel`);
* checks the call's control arguments (``image`` / ``control_image``, ``controlnet_conditioning_scale``,
  ``control_guidance_start`` / ``control_guidance_end``, ``guess_mode``);
* takes the output size from the control image (text-to-image) or the input image (the other tasks)
  when ``height`` / ``width`` are not given;
* puts each net's control image, prepared as Diffusers' control image processor does (``[0, 1]``, RGB,
  resized to the output size, one row per generated image), into ``cond.shared`` so every evaluation
  gets it repeated once per guider pass.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from kernel.guidance import check_scale
from kernel.image_processor import VaeImageProcessor
from kernel.pipeline_utils import batch_size_of, spatial_size

from kernel_controlnet.controlnet import ControlNetModel
from kernel_controlnet.hook import ControlInputs, ControlNetHook, controlnets_of
from kernel_controlnet.multicontrolnet import MultiControlNetModel


def per_net(value: Any, n: int, name: str) -> list[float]:
    """A number or a list with one number per net -> one finite float per net."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} ControlNet(s); give one number per net "
                             "or a single number for all")
        values = list(value)
    else:
        values = [value] * n
    for v in values:
        check_scale(name, v, minimum=None)
    return [float(v) for v in values]


def _image_count(image: Any) -> int:
    if isinstance(image, (list, tuple)):
        return len(image)
    if getattr(image, "ndim", 0) == 4:
        return int(image.shape[0])
    return 1


class ControlNetMixin:
    """Mixed in before a family pipeline class (see the module docstring)."""

    def _set_controlnet(self, controlnet: Any) -> None:
        if isinstance(controlnet, (list, tuple)):
            controlnet = MultiControlNetModel(list(controlnet))
        if controlnet is not None and not isinstance(controlnet, (ControlNetModel, MultiControlNetModel)):
            raise ValueError(f"controlnet must be a ControlNetModel, a list of them or a MultiControlNetModel, "
                             f"got {type(controlnet).__name__}")
        self.register_modules(controlnet=controlnet)
        if controlnet is not None:  # callbacks may ask for each net's control image by its name
            name = self._control_image_name
            self._callback_tensor_inputs = [n for n in type(self)._callback_tensor_inputs if n != name] + \
                self._control_keys()
        self.control_image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True,
                                                         do_normalize=False)
        self._control_hook = ControlNetHook("controlnet")
        self.conditioning_hooks.insert(0, self._control_hook)

    @property
    def _control_image_name(self) -> str:
        """The call argument holding the control image(s): ``image`` for text-to-image, else ``control_image``."""
        return "image" if self._task == "text2image" else "control_image"

    def _control_keys(self) -> list[str]:
        """The ``cond.shared`` (and callback) name of each net's control image."""
        name, n = self._control_image_name, len(controlnets_of(self.controlnet))
        return [name] if n == 1 else [f"{name}_{k}" for k in range(n)]

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        # Arguments some Diffusers ControlNet signatures lack but the shared tasks read.
        for name in ("masked_image_latents", "negative_original_size", "negative_target_size"):
            setattr(call, name, getattr(call, name, None))
        if not hasattr(call, "negative_crops_coords_top_left"):
            call.negative_crops_coords_top_left = getattr(call, "crops_coords_top_left", (0, 0))
        if self.controlnet is None:
            raise ValueError(f"{type(self).__name__} needs a controlnet component; pass controlnet=ControlNetModel(...)")
        call.control_images = self._control_image_list(call)
        self._default_size_from_images(call)
        super()._prepare(call)  # the family's size and prompt checks
        self._check_control(call)

    def _control_image_list(self, call: SimpleNamespace) -> list:
        """The control image argument as one entry per net (a nested per-prompt list is transposed)."""
        nets = controlnets_of(self.controlnet)
        n, name = len(nets), self._control_image_name
        images = getattr(call, name)
        if images is None:
            raise ValueError(f"{name} is required: the control image for each ControlNet (a PIL image, array, "
                             "tensor or a list of them)")
        if n == 1:
            images = [images]
        else:
            if not isinstance(images, (list, tuple)):
                raise ValueError(f"{name}: {n} ControlNets need a list of {n} control images (one per net), "
                                 f"got one {type(images).__name__}")
            if images and all(isinstance(i, (list, tuple)) for i in images):
                images = [list(t) for t in zip(*images)]  # per prompt -> per net
            if len(images) != n:
                raise ValueError(f"{name} has {len(images)} entries for {n} ControlNets; give one control image "
                                 "(or one list of images) per net")
        return list(images)

    def _check_control(self, call: SimpleNamespace) -> None:
        nets = controlnets_of(self.controlnet)
        n, name, images = len(nets), self._control_image_name, call.control_images
        prompts = batch_size_of(call.prompt, call.prompt_embeds)
        for image in images:
            count = _image_count(image)
            if count not in (1, prompts):
                raise ValueError(f"{name}: {count} control images for {prompts} prompt(s); give 1 image or one "
                                 "per prompt")
        call.control_scales = per_net(call.controlnet_conditioning_scale, n, "controlnet_conditioning_scale")
        call.control_starts = per_net(call.control_guidance_start, n, "control_guidance_start")
        call.control_ends = per_net(call.control_guidance_end, n, "control_guidance_end")
        for start, end in zip(call.control_starts, call.control_ends):
            if start < 0 or end > 1 or start >= end:
                raise ValueError(f"control_guidance_start ({start}) and control_guidance_end ({end}) must satisfy "
                                 "0 <= control_guidance_start < control_guidance_end <= 1")
        guess = getattr(call, "guess_mode", False)
        if not isinstance(guess, bool):
            raise ValueError(f"guess_mode must be True or False, got {guess!r}")
        call.control_guess_mode = guess or bool(nets[0].config.global_pool_conditions)

    def _default_size_from_images(self, call: SimpleNamespace) -> None:
        """Without ``height`` / ``width``: the control image's size (text-to-image) or the input image's,
        rounded down to the VAE factor, as Diffusers' ControlNet pipelines do."""
        if getattr(call, "height", None) is not None and getattr(call, "width", None) is not None:
            return
        reference = call.control_images[0]
        init = getattr(call, "image", None) if self._task != "text2image" else None
        is_latents = isinstance(init, torch.Tensor) and init.ndim == 4 and init.shape[1] == self.vae.config.latent_channels
        if init is not None and not is_latents:
            reference = init
        size = spatial_size(reference)
        if size is None:
            return
        factor = self.vae_scale_factor
        call.height = call.height if getattr(call, "height", None) is not None else size[0] - size[0] % factor
        call.width = call.width if getattr(call, "width", None) is not None else size[1] - size[1] % factor

    def _late_conditioning(self, call: SimpleNamespace, cond, latents: torch.Tensor) -> None:
        super()._late_conditioning(call, cond, latents)
        crop = getattr(call, "crop", None)  # inpainting's padding_mask_crop region
        dtype = self.controlnet.dtype
        per_prompt = call.num_images_per_prompt
        keys = self._control_keys()
        for key, image in zip(keys, call.control_images):
            x = self.control_image_processor.preprocess(image, height=call.height, width=call.width, crops_coords=crop,
                                                        resize_mode="fill" if crop is not None else "default")
            x = x.to(torch.float32)
            if x.shape[0] not in (1, call.batch // per_prompt):
                raise ValueError(f"{self._control_image_name}: {x.shape[0]} control images for "
                                 f"{call.batch // per_prompt} prompt(s); give 1 image or one per prompt")
            x = x.repeat_interleave(call.batch if x.shape[0] == 1 else per_prompt, dim=0)
            cond.shared[key] = x.to(device=call.device, dtype=dtype)
        self._control_hook.inputs = ControlInputs(keys, call.control_scales, call.control_starts, call.control_ends,
                                                  call.control_guess_mode, getattr(call, "scheduled_steps", None))
        if self._control_hook not in self.conditioning_hooks:
            self.conditioning_hooks.insert(0, self._control_hook)
