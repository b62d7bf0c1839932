"""What turns a family pipeline into its ControlNet variant: the ``controlnet`` component, the control
arguments of the call, the control images, and the hook (:mod:`kernel_controlnet.hook`).

The family class keeps its loop, tasks and guidance.  :class:`ControlMixinBase` is what every denoiser
architecture shares:

* registers ``controlnet`` (a list or tuple of nets becomes the architecture's multi-net model);
* reads the control image argument (``image`` / ``control_image``) as one entry per *control* (a net and
  its image; a single union net may take several images, each its own control);
* checks ``controlnet_conditioning_scale`` and ``control_guidance_start`` / ``control_guidance_end`` (a
  number or one per control) and hands them to the hook with the schedule length.

:class:`ControlNetMixin` is the UNet variant (SD 1.x/2.x, SDXL): it also checks ``guess_mode``, takes the
output size from the control image (text-to-image) or the input image (the other tasks) when ``height`` /
``width`` are not given, and puts each control image, prepared as Diffusers' control image processor does
(``[0, 1]``, RGB, resized to the output size, one row per generated image), into ``cond.shared`` so every
evaluation gets it repeated once per guider pass.  The SD3 and Flux variants are in
:mod:`kernel_controlnet.sd3` and :mod:`kernel_controlnet.flux`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from kernel.guidance import check_scale
from kernel_autoencoders.image_processor import VaeImageProcessor
from kernel.pipeline_utils import batch_size_of, spatial_size

from kernel_controlnet.controlnet import ControlNetModel
from kernel_controlnet.hook import ControlInputs, ControlNetHook, controlnets_of
from kernel_controlnet.multicontrolnet import MultiControlNetModel


def per_net(value: Any, n: int, name: str) -> list[float]:
    """A number or a list with one number per net (control) -> one finite float per net."""
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


def control_pixels(call: SimpleNamespace, image: Any, name: str, processor: VaeImageProcessor,
                   **preprocess: Any) -> torch.Tensor:
    """One control image argument as pixels, one row per generated image, as Diffusers' transformer ControlNet
    pipelines prepare it: a tensor is used as given (``(N, C, H, W)``, already in the model's range), anything
    else goes through ``processor`` at the output size."""
    if isinstance(image, torch.Tensor):
        x = image if image.ndim == 4 else image.unsqueeze(0)
        if tuple(x.shape[-2:]) != (call.height, call.width):
            raise ValueError(f"{name}: a tensor control image is used as given and must be {call.height}x{call.width} "
                             f"(height x width), got {tuple(x.shape[-2:])}")
    else:
        x = processor.preprocess(image, height=call.height, width=call.width, **preprocess)
    prompts = call.batch // call.num_images_per_prompt
    if x.shape[0] not in (1, prompts):
        raise ValueError(f"{name}: {x.shape[0]} control images for {prompts} prompt(s); give 1 image or one per prompt")
    return x.repeat_interleave(call.batch if x.shape[0] == 1 else call.num_images_per_prompt, dim=0)


def default_size_from_tensor(call: SimpleNamespace) -> None:
    """Without ``height`` / ``width``: a tensor control image's size (Diffusers then generates at that size)."""
    first = call.control_images[0]
    if isinstance(first, torch.Tensor) and first.ndim >= 3:
        call.height = call.height or int(first.shape[-2])
        call.width = call.width or int(first.shape[-1])


def check_scales_and_windows(call: SimpleNamespace, n: int) -> None:
    """``call.control_scales`` / ``control_starts`` / ``control_ends``: one per net (of ``n``), each window inside
    [0, 1] and not empty."""
    call.control_scales = per_net(call.controlnet_conditioning_scale, n, "controlnet_conditioning_scale")
    call.control_starts = per_net(call.control_guidance_start, n, "control_guidance_start")
    call.control_ends = per_net(call.control_guidance_end, n, "control_guidance_end")
    for start, end in zip(call.control_starts, call.control_ends):
        if start < 0 or end > 1 or start >= end:
            raise ValueError(f"control_guidance_start ({start}) and control_guidance_end ({end}) must satisfy "
                             "0 <= control_guidance_start < control_guidance_end <= 1")

class ControlMixinBase:
    """Mixed in before a family pipeline class; subclasses name their net classes and hook."""

    #: The architecture's ControlNet class, its multi-net class and its conditioning hook class.
    _single_net: type = ControlNetModel
    _multi_net: type = MultiControlNetModel
    _hook_class: type = ControlNetHook
    #: Whether a list of per-prompt lists of control images is turned into per-net lists (Diffusers' SD pipelines).
    _transpose_nested_control_images = False
    #: Whether a multi-net model with a single net takes any number of control images, each through that net
    #: (Flux union ControlNets); otherwise it takes one image per net.
    _one_net_many_controls = False

    def _set_controlnet(self, controlnet: Any) -> None:
        if isinstance(controlnet, (list, tuple)):
            controlnet = self._multi_net(list(controlnet))
        single, multi = self._single_net.__name__, self._multi_net.__name__
        if controlnet is not None and not isinstance(controlnet, (self._single_net, self._multi_net)):
            raise ValueError(f"controlnet must be a {single}, a list of them or a {multi}, "
                             f"got {type(controlnet).__name__}")
        self.register_modules(controlnet=controlnet)
        if controlnet is not None:  # callbacks may ask for each net's control image by its name
            self._callback_tensor_inputs = self._with_control_callback_names(len(controlnets_of(controlnet)))
        self._control_hook = self._hook_class("controlnet")
        self.conditioning_hooks.insert(0, self._control_hook)

    def _with_control_callback_names(self, count: int) -> list[str]:
        name = self._control_image_name
        names = [n for n in type(self)._callback_tensor_inputs if n != name]
        return names + self._control_keys(count) if name in type(self)._callback_tensor_inputs else names

    @property
    def _control_image_name(self) -> str:
        """The call argument holding the control image(s)."""
        return "control_image"

    def _control_keys(self, count: int | None = None) -> list[str]:
        """The ``cond`` (and callback) name of each control's image: the argument's name for one control,
        ``<name>_0``, ``<name>_1``, ... for several."""
        name = self._control_image_name
        count = len(controlnets_of(self.controlnet)) if count is None else count
        return [name] if count == 1 else [f"{name}_{k}" for k in range(count)]

    # ---------------------------------------------------------------- arguments
    def _require_controlnet(self) -> None:
        if self.controlnet is None:
            raise ValueError(f"{type(self).__name__} needs a controlnet component; pass "
                             f"controlnet={self._single_net.__name__}(...)")

    def _control_image_list(self, call: SimpleNamespace) -> list:
        """The control image argument as one entry per control; ``call.control_nets`` the net of each."""
        nets = controlnets_of(self.controlnet)
        n, name = len(nets), self._control_image_name
        images = getattr(call, name)
        if images is None:
            raise ValueError(f"{name} is required: the control image for each ControlNet (a PIL image, array, "
                             "tensor or a list of them)")
        is_multi = isinstance(self.controlnet, self._multi_net)
        many = self._one_net_many_controls and is_multi and n == 1  # a union net, one control per image
        if not is_multi or (n == 1 and not many and not isinstance(images, (list, tuple))):
            images = [images]
        else:
            if not isinstance(images, (list, tuple)):
                what = "one control image per control" if many else f"a list of {n} control images (one per net)"
                raise ValueError(f"{name}: {type(self.controlnet).__name__} needs {what}, got one "
                                 f"{type(images).__name__}")
            if self._transpose_nested_control_images and images and all(isinstance(i, (list, tuple)) for i in images):
                images = [list(t) for t in zip(*images)]  # per prompt -> per net
            if not images or (len(images) != n and not many):
                raise ValueError(f"{name} has {len(images)} entries for {n} ControlNets; give one control image "
                                 "(or one list of images) per net")
        call.control_nets = [0] * len(images) if many else list(range(len(images)))
        if many:  # the number of controls is the call's: name each one for callbacks
            self._callback_tensor_inputs = self._with_control_callback_names(len(images))
        return list(images)

    def _check_control(self, call: SimpleNamespace) -> None:
        """Per-control images, scales and windows (``call.control_scales``, ``_starts``, ``_ends``)."""
        n, name, images = len(call.control_images), self._control_image_name, call.control_images
        prompts = batch_size_of(call.prompt, call.prompt_embeds)
        for image in images:
            count = _image_count(image)
            if count not in (1, prompts):
                raise ValueError(f"{name}: {count} control images for {prompts} prompt(s); give 1 image or one "
                                 "per prompt")
        check_scales_and_windows(call, n)

    def _control_inputs(self, call: SimpleNamespace, **extra: Any) -> ControlInputs:
        """The hook's settings for this call (installs the hook again if it was removed)."""
        if self._control_hook not in self.conditioning_hooks:
            self.conditioning_hooks.insert(0, self._control_hook)
        return ControlInputs(self._control_keys(len(call.control_images)), call.control_scales, call.control_starts,
                             call.control_ends, scheduled_steps=getattr(call, "scheduled_steps", None),
                             nets=call.control_nets, **extra)


class ControlNetMixin(ControlMixinBase):
    """The UNet variant (SD 1.x/2.x, SDXL; see the module docstring)."""

    _transpose_nested_control_images = True

    def _set_controlnet(self, controlnet: Any) -> None:
        super()._set_controlnet(controlnet)
        self.control_image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True,
                                                         do_normalize=False)

    @property
    def _control_image_name(self) -> str:
        """``image`` for text-to-image, else ``control_image``."""
        return "image" if self._task == "text2image" else "control_image"

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        # Arguments some Diffusers ControlNet signatures lack but the shared tasks read.
        for name in ("masked_image_latents", "negative_original_size", "negative_target_size"):
            setattr(call, name, getattr(call, name, None))
        if not hasattr(call, "negative_crops_coords_top_left"):
            call.negative_crops_coords_top_left = getattr(call, "crops_coords_top_left", (0, 0))
        self._require_controlnet()
        call.control_images = self._control_image_list(call)
        self._default_size_from_images(call)
        super()._prepare(call)  # the family's size and prompt checks
        self._check_control(call)

    def _check_control(self, call: SimpleNamespace) -> None:
        super()._check_control(call)
        guess = getattr(call, "guess_mode", False)
        if not isinstance(guess, bool):
            raise ValueError(f"guess_mode must be True or False, got {guess!r}")
        call.control_guess_mode = guess or bool(controlnets_of(self.controlnet)[0].config.global_pool_conditions)

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
        keys = self._control_keys(len(call.control_images))
        for key, image in zip(keys, call.control_images):
            x = self.control_image_processor.preprocess(image, height=call.height, width=call.width, crops_coords=crop,
                                                        resize_mode="fill" if crop is not None else "default")
            x = x.to(torch.float32)
            if x.shape[0] not in (1, call.batch // per_prompt):
                raise ValueError(f"{self._control_image_name}: {x.shape[0]} control images for "
                                 f"{call.batch // per_prompt} prompt(s); give 1 image or one per prompt")
            x = x.repeat_interleave(call.batch if x.shape[0] == 1 else per_prompt, dim=0)
            cond.shared[key] = x.to(device=call.device, dtype=dtype)
        self._control_hook.inputs = self._control_inputs(call, guess_mode=call.control_guess_mode)
