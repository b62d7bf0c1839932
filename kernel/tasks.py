"""Generation written once: the call driver and the three tasks every image family shares.

A family pipeline's ``__call__`` keeps Diffusers' signature and hands its arguments to
:meth:`TaskMixin._generate`, which runs the same sequence for every family and task:

1. ``_prepare(call)`` (family): defaults such as the size, and the family's own argument checks;
2. shared checks (batch, generators, output type, callback names, strength, guidance scales);
3. the guider: ``pipe.guider`` if set, else ``_default_guider(call)`` built from the call's arguments;
4. ``_encode(call, guider.uses_negative)`` (family) -> :class:`kernel.engine.Conditioning`;
5. the schedule: ``_retrieve_timesteps(call)`` (family), then the task's trimming (``strength``,
   ``denoising_start``) and ``denoising_end``;
6. the task's starting latents (text-to-image: noise; image-to-image: the image's latents noised to
   the first kept step, SDEdit, arXiv:2108.01073; inpainting: the same plus either the masked-image
   input channels of an inpainting model or, for a plain model, pasting the re-noised known region
   back after every step, as RePaint does, arXiv:2201.09865), then ``_late_conditioning`` (family);
7. the loop (:meth:`kernel.engine.Engine.denoise`);
8. decoding (``_decode``; families override the VAE step only) and ``_output`` (family).

The family also says how to evaluate its denoiser (``_evaluate``), its latent grid
(``_latent_shape``) and, for token models, how latents are packed (``_pack_latents``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import torch

from kernel.engine import Conditioning, ExtraChannels
from kernel.guidance import BaseGuidance, GuidancePass, GuidanceStep, check_scale
from kernel.pipeline_utils import (check_denoising_window, check_generators, check_inpaint_inputs, check_output_type,
                                   check_steps_left, check_strength, effective_batch, encode_latents, is_open_fraction,
                                   repeat_to_batch, step_kwargs, strength_timesteps, truncate_for_denoising_end)
from kernel.scheduling import randn_tensor

TEXT2IMAGE, IMAGE2IMAGE, INPAINTING = "text2image", "image2image", "inpainting"


class NoGuidance(BaseGuidance):
    """One positive evaluation per step, used as is (unconditional and guidance-distilled models)."""

    uses_negative = False

    def passes(self, step: GuidanceStep) -> list[GuidancePass]:
        return [GuidancePass("pred_cond")]

    def combine(self, predictions, step: GuidanceStep):
        return predictions["pred_cond"]


class TaskMixin:
    """The call driver and the shared tasks (see the module docstring)."""

    #: Which task ``__call__`` runs: ``"text2image"``, ``"image2image"`` or ``"inpainting"``.
    _task = TEXT2IMAGE
    #: Strength rounding: True keeps ``int(steps * strength)`` steps (UNet pipelines), False floors the
    #: start index instead (SD3, Flux, PixArt), as the reference pipelines do.
    _floor_kept_steps = True
    #: Whether image-to-image encodes one copy of the image per generator when given a list of them.
    _encode_per_generator = True
    #: A guider set here (``pipe.guider = ...``) replaces the one built from the call's arguments.
    guider: Any = None

    # ---------------------------------------------------------------- family hooks (defaults)
    def _prepare(self, call: SimpleNamespace) -> None:
        """Defaults and family-specific checks (sizes, prompts); runs first."""

    def _encode(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        raise NotImplementedError(f"{type(self).__name__} does not encode its conditioning (_encode)")

    def _retrieve_timesteps(self, call: SimpleNamespace) -> tuple[torch.Tensor, int]:
        from kernel.pipeline_utils import retrieve_timesteps

        return retrieve_timesteps(self.scheduler, call.num_inference_steps, call.device,
                                  getattr(call, "timesteps", None), getattr(call, "sigmas", None))

    def _latent_shape(self, call: SimpleNamespace) -> tuple[int, ...]:
        raise NotImplementedError(f"{type(self).__name__} does not give its latent shape (_latent_shape)")

    def _pack_latents(self, latents: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        """Latent grid -> what the denoiser takes (identity; token models pack patches).  Must return
        already packed latents unchanged."""
        return latents

    def _unpack_latents(self, latents: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        return latents

    def _pack_mask(self, mask: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        """A ``(B, 1, h, w)`` latent-grid mask in the loop's latent layout (identity: it broadcasts)."""
        return mask

    def _late_conditioning(self, call: SimpleNamespace, cond: Conditioning, latents: torch.Tensor) -> None:
        """Conditioning that depends on the starting latents (SDXL's size ids); runs before the loop."""

    def _default_guider(self, call: SimpleNamespace):
        """The guider the call's own arguments describe: classifier-free guidance with the call's
        ``guidance_scale`` / ``guidance_rescale`` (from the registry), or none without them."""
        if getattr(call, "guidance_scale", None) is None:
            return NoGuidance()
        from kernel.registry import get_registry

        cfg = get_registry().resolve("ClassifierFreeGuidance")
        return cfg(guidance_scale=call.guidance_scale, guidance_rescale=getattr(call, "guidance_rescale", 0.0) or 0.0)

    def _denoiser_channels(self) -> int:
        return self._denoiser()[1].config.in_channels

    def _output(self, images: Any, call: SimpleNamespace):
        raise NotImplementedError

    # ---------------------------------------------------------------- call state seen by callbacks
    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def guidance_rescale(self):
        return getattr(self._call, "guidance_rescale", 0.0)

    @property
    def do_classifier_free_guidance(self) -> bool:
        guider = getattr(self, "_call_guider", None)
        return bool(guider is not None and guider.uses_negative)

    @property
    def cross_attention_kwargs(self):
        return getattr(self._call, "cross_attention_kwargs", None)

    @property
    def joint_attention_kwargs(self):
        return getattr(self._call, "joint_attention_kwargs", None)

    @property
    def clip_skip(self):
        return getattr(self._call, "clip_skip", None)

    @property
    def denoising_start(self):
        return getattr(self._call, "denoising_start", None)

    @property
    def denoising_end(self):
        return getattr(self._call, "denoising_end", None)

    # ---------------------------------------------------------------- the driver
    def _generate(self, arguments: dict[str, Any]):
        arguments.pop("self", None)
        arguments.pop("__class__", None)
        call = SimpleNamespace(**arguments)
        self._call, self._interrupt = call, False
        self._guidance_scale = getattr(call, "guidance_scale", None)
        self._prepare(call)
        self._check_call(call)
        guider = self.guider if self.guider is not None else self._default_guider(call)
        self._call_guider = guider
        call.device = self._execution_device
        cond = self._encode(call, guider.uses_negative)
        call.dtype = next(iter(cond.positive.values())).dtype
        timesteps, steps = self._timesteps(call)
        prepare = {TEXT2IMAGE: self._text2image, IMAGE2IMAGE: self._image2image, INPAINTING: self._inpainting}
        latents, blend, hooks = prepare[self._task](call, cond, timesteps)
        self._late_conditioning(call, cond, latents)
        legacy = getattr(call, "callback", None)
        latents = self.denoise(
            latents, timesteps, steps, cond, guider,
            step_kwargs=step_kwargs(self.scheduler, call.generator, getattr(call, "eta", 0.0)),
            callback=call.callback_on_step_end, callback_names=call.callback_names, legacy_callback=legacy,
            callback_steps=getattr(call, "callback_steps", 1), blend=blend, hooks=hooks,
            output_index=self._output_index(steps))
        images = self._decode(latents, call)
        self.maybe_free_model_hooks()
        return self._output(images, call)

    def _output_index(self, steps: int) -> int:
        return 0

    def _check_call(self, call: SimpleNamespace) -> None:
        call.callback_on_step_end = getattr(call, "callback_on_step_end", None)
        call.callback_names = self._callback_names(call.callback_on_step_end,
                                                   getattr(call, "callback_on_step_end_tensor_inputs", ()))
        call.batch = effective_batch(call.prompt, call.prompt_embeds, getattr(call, "num_images_per_prompt", 1))
        check_generators(call.generator, call.batch)
        check_output_type(call.output_type)
        for name in ("guidance_scale", "guidance_rescale", "true_cfg_scale"):
            if getattr(call, name, None) is not None:
                check_scale(name, getattr(call, name), minimum=None)
        if self._task != TEXT2IMAGE:
            check_strength(call.strength)
        if self._task == INPAINTING:
            check_inpaint_inputs(call.image, call.mask_image, call.padding_mask_crop, call.output_type,
                                 self.vae.config.latent_channels)
        check_denoising_window(getattr(call, "denoising_start", None), getattr(call, "denoising_end", None))
        for name in ("latents", "masked_image_latents"):
            value = getattr(call, name, None)
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")

    # ---------------------------------------------------------------- schedule
    def _timesteps(self, call: SimpleNamespace) -> tuple[torch.Tensor, int]:
        timesteps, steps = self._retrieve_timesteps(call)
        if self._task == TEXT2IMAGE:
            self.scheduler.set_begin_index(0)
        else:
            start = call.denoising_start if is_open_fraction(getattr(call, "denoising_start", None)) else None
            timesteps, steps = strength_timesteps(self.scheduler, steps, call.strength, denoising_start=start,
                                                  floor_kept=self._floor_kept_steps)
            check_steps_left(steps, call.strength)
        # The schedule's length before a ``denoising_end`` cut, for per-step windows that are fractions of the
        # whole schedule (e.g. a conditioning hook's start/end, set up from the call).
        call.scheduled_steps = len(timesteps)
        timesteps, count = truncate_for_denoising_end(self.scheduler, timesteps, getattr(call, "denoising_end", None))
        return timesteps, steps if count is None else count

    # ---------------------------------------------------------------- latents
    def _noise(self, call: SimpleNamespace, shape) -> torch.Tensor:
        return randn_tensor(shape, generator=call.generator, device=call.device, dtype=call.dtype)

    def _given_latents(self, call: SimpleNamespace, shape: tuple[int, ...]) -> torch.Tensor:
        """The user's ``latents``, checked against the latent grid (packed form accepted for token models)."""
        latents = call.latents
        packed = self._pack_latents(torch.empty(shape, device="meta"), call).shape
        if tuple(latents.shape) not in (tuple(shape), tuple(packed)):
            raise ValueError(f"latents must have shape {tuple(shape)} (batch x channels x height/"
                             f"{self.vae_scale_factor} x width/{self.vae_scale_factor}) for this call, "
                             f"got {tuple(latents.shape)}")
        return self._pack_latents(latents.to(device=call.device, dtype=call.dtype), call)

    def _text2image(self, call, cond, timesteps):
        shape = self._latent_shape(call)
        if call.latents is None:
            latents = self._pack_latents(self._noise(call, shape), call)
        else:
            latents = self._given_latents(call, shape)
        return latents * self.scheduler.init_noise_sigma, None, ()

    def _encode_vae(self, pixels: torch.Tensor, generator) -> torch.Tensor:
        """Encoder latents (unnormalised) of ``pixels``; SDXL overrides it to encode in float32."""
        return encode_latents(self.vae, pixels, generator)

    def _image_latents(self, call: SimpleNamespace, pixels: torch.Tensor, *, per_generator: bool) -> torch.Tensor:
        """Normalised latents of ``pixels`` (or ``pixels`` themselves when they are latents), one per image."""
        x = pixels.to(device=call.device, dtype=call.dtype)
        if x.shape[1] != self.vae.config.latent_channels:
            if per_generator and isinstance(call.generator, list):
                x = repeat_to_batch(x, call.batch, "images")
            x = self.vae.normalize_latents(self._encode_vae(x, call.generator))
        if x.shape[0] > call.batch:
            raise ValueError(f"got {x.shape[0]} images for a batch of {call.batch} (prompts x num_images_per_prompt); "
                             "pass 1 image or a divisor of the batch")
        # contiguous: encoder outputs can come out channels-last, and the layout changes conv arithmetic
        return repeat_to_batch(x, call.batch, "images").contiguous()

    def _preprocess_image(self, call: SimpleNamespace, **kwargs: Any) -> torch.Tensor:
        if call.image is None:
            raise ValueError(f"image is required for {self._task.replace('2', '-to-')} (a PIL image, array, "
                             "tensor or list of them)")
        return self.image_processor.preprocess(call.image, height=getattr(call, "height", None),
                                               width=getattr(call, "width", None), **kwargs)

    def _image2image(self, call, cond, timesteps):
        pixels = self._preprocess_image(call)
        if getattr(call, "latents", None) is not None:
            return self._pack_latents(call.latents.to(device=call.device, dtype=call.dtype), call), None, ()
        init = self._image_latents(call, pixels, per_generator=self._encode_per_generator)
        if not is_open_fraction(getattr(call, "denoising_start", None)):
            init = self.scheduler.add_noise(init, self._noise(call, init.shape), timesteps[:1].repeat(call.batch))
        return self._pack_latents(init, call), None, ()

    def _inpainting(self, call, cond, timesteps):
        crop, resize_mode = None, "default"
        if call.padding_mask_crop is not None:
            crop = self.mask_processor.get_crop_region(call.mask_image, call.width, call.height,
                                                       pad=call.padding_mask_crop)
            resize_mode = "fill"
        call.crop = crop
        pixels = self._preprocess_image(call, crops_coords=crop, resize_mode=resize_mode).to(torch.float32)
        mask = self.mask_processor.preprocess(call.mask_image, height=call.height, width=call.width,
                                              resize_mode=resize_mode, crops_coords=crop)
        latent_channels = self.vae.config.latent_channels
        blend = self._denoiser_channels() == latent_channels
        image_is_latents = pixels.shape[1] == latent_channels
        add_noise = not is_open_fraction(getattr(call, "denoising_start", None))
        shape = self._latent_shape(call)

        image_latents = None
        if image_is_latents or blend or (call.latents is None and call.strength < 1.0):
            image_latents = self._image_latents(call, pixels, per_generator=False)
        if call.latents is None or not add_noise:
            noise = self._noise(call, shape)
            if not add_noise:
                latents = image_latents
            elif call.strength == 1.0:
                latents = noise * self.scheduler.init_noise_sigma
            else:
                latents = self.scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(call.batch))
        else:
            noise = self._unpack_latents(self._given_latents(call, shape), call)
            latents = noise * self.scheduler.init_noise_sigma

        masked = call.masked_image_latents
        if masked is None and not image_is_latents:
            masked = pixels * (mask < 0.5)
        mask = torch.nn.functional.interpolate(mask, size=shape[-2:])
        cond.shared["mask"] = repeat_to_batch(mask.to(device=call.device, dtype=call.dtype), call.batch, "mask_image")
        hooks = ()
        if masked is not None:
            masked = self._image_latents(call, masked, per_generator=False)
            cond.shared["masked_image_latents"] = masked.to(device=call.device, dtype=call.dtype)
        if not blend:
            self._check_inpaint_channels(cond)
            hooks = (ExtraChannels("mask", "masked_image_latents"),)
        blend_fn = self._paste_known(call, cond, timesteps, image_latents, noise) if blend else None
        return self._pack_latents(latents, call), blend_fn, hooks

    def _check_inpaint_channels(self, cond: Conditioning) -> None:
        wanted = self._denoiser_channels()
        parts = {"latents": self.vae.config.latent_channels, "mask": cond.shared["mask"].shape[1]}
        if "masked_image_latents" in cond.shared:
            parts["masked_image_latents"] = cond.shared["masked_image_latents"].shape[1]
        if sum(parts.values()) != wanted or len(parts) < 3:
            raise ValueError(f"the denoiser takes {wanted} input channels but "
                             f"{' + '.join(f'{k} ({v})' for k, v in parts.items())} give {sum(parts.values())}; "
                             f"use a {self.vae.config.latent_channels}-channel model or an inpainting model")

    def _paste_known(self, call, cond: Conditioning, timesteps, image_latents, noise) -> Callable:
        """After step ``i``: outside the mask, the image latents noised to the next step's level."""
        scheduler = self.scheduler
        known0, noise = self._pack_latents(image_latents, call), self._pack_latents(noise, call)

        def blend(i: int, current: torch.Tensor) -> torch.Tensor:
            mask = self._pack_mask(cond.shared["mask"], call)
            known = known0
            if i < len(timesteps) - 1:
                known = scheduler.add_noise(known, noise, timesteps[i + 1:i + 2])
            return (1 - mask) * known + mask * current
        return blend

    # ---------------------------------------------------------------- decoding
    def _vae_decode(self, latents: torch.Tensor, call: SimpleNamespace) -> torch.Tensor:
        """Denoiser latents -> pixels in [-1, 1]."""
        z = self.vae.denormalize_latents(latents)
        return self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]

    def _decode(self, latents: torch.Tensor, call: SimpleNamespace) -> Any:
        if call.output_type == "latent":
            return latents
        image = self._vae_decode(self._unpack_latents(latents, call), call)
        images = self.image_processor.postprocess(image, output_type=call.output_type)
        if self._task == INPAINTING and call.padding_mask_crop is not None:
            images = [self.image_processor.apply_overlay(call.mask_image, call.image, im, call.crop) for im in images]
        return images
