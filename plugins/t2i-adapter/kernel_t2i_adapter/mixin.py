"""What turns a family pipeline into its T2I-Adapter variant: the ``adapter`` component, the adapter
arguments of the call, the features, and the hook (:class:`kernel_t2i_adapter.hook.T2IAdapterHook`).

The family class keeps its loop, task and guidance; this mixin only

* registers ``adapter`` (a list or tuple of adapters becomes a :class:`MultiAdapter`);
* checks the call's adapter arguments (``image``, ``adapter_conditioning_scale``, ``adapter_conditioning_factor``);
* takes the output size from the control image when ``height`` / ``width`` are not given, rounded down to a
  multiple of the adapter's ``downscale_factor`` (Diffusers' rule);
* prepares each adapter's image as Diffusers does: PIL images are resized (Lanczos) to the output size and
  scaled to ``[0, 1]`` (no normalisation); tensors and arrays are taken as they are, so they must already be
  the output size.  A PIL image is converted to grayscale or RGB when the adapter takes 1 or 3 channels;
* runs the adapter(s) once, scales the features (``adapter_conditioning_scale``; with several adapters the
  weighted sum), gives them one row per generated image and puts them into ``cond.shared`` for the hook.

One image is shared by every prompt, or give one per prompt: image ``k`` then conditions every image of
prompt ``k``.  (Diffusers tiles per-prompt features with ``num_images_per_prompt > 1``, pairing prompt ``k``
with other prompts' images; this is the one case where the numbers differ on purpose.)
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import PIL.Image
import torch

from kernel.guidance import check_scale
from kernel.pipeline_utils import batch_size_of, check_size, spatial_size

from kernel_t2i_adapter.adapter import T2IAdapter
from kernel_t2i_adapter.hook import AdapterInputs, T2IAdapterHook, adapter_steps
from kernel_t2i_adapter.multiadapter import MultiAdapter


def adapters_of(adapter: Any) -> list[T2IAdapter]:
    """The adapters of a ``T2IAdapter`` or ``MultiAdapter``, as a list."""
    return list(adapter.adapters) if isinstance(adapter, MultiAdapter) else [adapter]


def per_adapter(value: Any, n: int, name: str) -> list[float]:
    """A number or a list with one number per adapter -> one finite float per adapter."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} adapter(s); give one number per adapter "
                             "or a single number for all")
        values = list(value)
    else:
        values = [value] * n
    for v in values:
        check_scale(name, v, minimum=None)
    return [float(v) for v in values]


def adapter_input(image: Any, height: int, width: int, channels: int) -> torch.Tensor:
    """One adapter's control image(s) -> ``(B, C, height, width)`` float32 in the image's own range
    (PIL: ``[0, 1]``).  PIL images are resized with Lanczos; tensors and arrays must already have the size."""
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError("image is an empty list; give a control image (PIL image, array or tensor)")
    if all(isinstance(i, PIL.Image.Image) for i in items):
        mode = {1: "L", 3: "RGB"}.get(channels)
        arrays = []
        for i in items:
            if mode is not None and i.mode != mode:
                i = i.convert(mode)
            a = np.asarray(i.resize((width, height), resample=PIL.Image.Resampling.LANCZOS))
            arrays.append(a[..., None] if a.ndim == 2 else a)
        x = torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    elif all(isinstance(i, torch.Tensor) for i in items):
        dims = {i.ndim for i in items}
        if dims == {3}:
            x = torch.stack(items)
        elif dims == {4}:
            x = torch.cat(items)
        else:
            raise ValueError(f"image tensors must all be (C, H, W) or all (B, C, H, W), got {sorted(dims)}-d tensors")
    elif all(isinstance(i, np.ndarray) for i in items):
        arrays = [i.astype(np.float32) / 255.0 if i.dtype == np.uint8 else i.astype(np.float32) for i in items]
        arrays = [a[..., None] if a.ndim == 2 else a for a in arrays]
        arrays = [a[None] if a.ndim == 3 else a for a in arrays]
        if any(a.ndim != 4 for a in arrays):
            raise ValueError("image arrays must be (H, W), (H, W, C) or (B, H, W, C)")
        x = torch.from_numpy(np.concatenate(arrays)).permute(0, 3, 1, 2)
    else:
        kinds = sorted({type(i).__name__ for i in items})
        raise TypeError(f"image must be PIL images, numpy arrays or torch tensors (not mixed), got {kinds}")
    if tuple(x.shape[-2:]) != (height, width):
        raise ValueError(f"image tensors and arrays are not resized: their size {tuple(x.shape[-2:])} must be the "
                         f"output size ({height}, {width}); pass PIL images to have them resized")
    if x.shape[1] != channels:
        raise ValueError(f"image has {x.shape[1]} channel(s) but the adapter takes {channels}")
    return x.float()


class T2IAdapterMixin:
    """Mixed in before a family pipeline class (see the module docstring)."""

    def _set_adapter(self, adapter: Any) -> None:
        if isinstance(adapter, (list, tuple)):
            adapter = MultiAdapter(list(adapter))
        if adapter is not None and not isinstance(adapter, (T2IAdapter, MultiAdapter)):
            raise ValueError(f"adapter must be a T2IAdapter, a list of them or a MultiAdapter, got "
                             f"{type(adapter).__name__}")
        self.register_modules(adapter=adapter)
        self._adapter_hook = T2IAdapterHook()
        self.conditioning_hooks.insert(0, self._adapter_hook)

    # ---------------------------------------------------------------- engine hooks
    def _prepare(self, call: SimpleNamespace) -> None:
        if self.adapter is None:
            raise ValueError(f"{type(self).__name__} needs an adapter component; pass adapter=T2IAdapter(...)")
        steps = getattr(call, "callback_steps", 1)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            raise ValueError(f"callback_steps must be a positive int, got {steps!r}")
        call.adapter_images = self._adapter_image_list(call)
        self._default_size_from_image(call)
        super()._prepare(call)  # the family's size and prompt checks
        self._check_adapter(call)

    def _adapter_image_list(self, call: SimpleNamespace) -> list:
        """The ``image`` argument as one entry per adapter."""
        n, image = len(adapters_of(self.adapter)), call.image
        if image is None:
            raise ValueError("image is required: the adapter's control image (a PIL image, array or tensor, or a "
                             "list of them)")
        if n == 1:
            return [image]
        if not isinstance(image, (list, tuple)) or len(image) != n:
            got = f"{len(image)} entries" if isinstance(image, (list, tuple)) else f"one {type(image).__name__}"
            raise ValueError(f"image: a MultiAdapter of {n} adapters needs a list of {n} control images (one per "
                             f"adapter, each an image or a list of per-prompt images), got {got}")
        return list(image)

    def _default_size_from_image(self, call: SimpleNamespace) -> None:
        """Without ``height`` / ``width``: the control image's size rounded down to the adapter's factor."""
        size = spatial_size(call.adapter_images[0])
        if size is None:
            return
        f = self.adapter.downscale_factor
        if call.height is None:
            call.height = size[0] // f * f
        if call.width is None:
            call.width = size[1] // f * f

    def _check_adapter(self, call: SimpleNamespace) -> None:
        adapters = adapters_of(self.adapter)
        n = len(adapters)
        check_size(call.height, call.width, self.adapter.downscale_factor, "the adapter's downscale_factor")
        call.adapter_scales = per_adapter(call.adapter_conditioning_scale, n, "adapter_conditioning_scale")
        factor = getattr(call, "adapter_conditioning_factor", 1.0)
        check_scale("adapter_conditioning_factor", factor, minimum=None)
        if not 0 <= factor <= 1:
            raise ValueError(f"adapter_conditioning_factor must be in [0, 1] (the fraction of steps with the "
                             f"adapter), got {factor!r}")
        call.adapter_factor = float(factor)
        prompts = batch_size_of(call.prompt, call.prompt_embeds)
        call.adapter_inputs = []
        for adapter, image in zip(adapters, call.adapter_images):
            x = adapter_input(image, call.height, call.width, adapter.config.in_channels)
            if x.shape[0] not in (1, prompts):
                raise ValueError(f"image: {x.shape[0]} control images for {prompts} prompt(s); give 1 image or one "
                                 "per prompt")
            call.adapter_inputs.append(x)

    def _timesteps(self, call: SimpleNamespace):
        timesteps, steps = super()._timesteps(call)
        call.adapter_num_steps = steps  # Diffusers' step count for adapter_conditioning_factor
        return timesteps, steps

    def _late_conditioning(self, call: SimpleNamespace, cond, latents: torch.Tensor) -> None:
        super()._late_conditioning(call, cond, latents)
        adapter = self.adapter
        xs = [x.to(device=call.device, dtype=adapter.dtype) for x in call.adapter_inputs]
        if isinstance(adapter, MultiAdapter):
            features = adapter(xs, call.adapter_scales)
        else:
            features = [f * call.adapter_scales[0] for f in adapter(xs[0])]
        per_prompt = call.num_images_per_prompt
        keys = []
        for i, f in enumerate(features):
            # one row per generated image: a shared image's features for all, else prompt k's for its images
            f = f.repeat(call.batch, 1, 1, 1) if f.shape[0] == 1 else f.repeat_interleave(per_prompt, dim=0)
            keys.append(f"adapter_feature_{i}")
            cond.shared[keys[-1]] = f.to(device=call.device, dtype=latents.dtype)
        self._adapter_hook.inputs = AdapterInputs(keys, adapter_steps(call.adapter_num_steps, call.adapter_factor))
        if self._adapter_hook not in self.conditioning_hooks:
            self.conditioning_hooks.insert(0, self._adapter_hook)
