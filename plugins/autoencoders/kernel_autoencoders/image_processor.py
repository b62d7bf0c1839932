"""Pixels in, pixels out: the conversions between user images and VAE tensors.

:class:`VaeImageProcessor` turns PIL images, numpy arrays (``H x W x C`` in ``[0, 1]``) and
torch tensors (``C x H x W`` in ``[0, 1]``), single or in lists, into one ``B x C x H x W``
float tensor in ``[-1, 1]`` whose sides are multiples of the VAE's downsampling factor, and
turns decoded tensors back into PIL images, numpy arrays or tensors.  Its config keys,
defaults and numbers are those of Diffusers' ``VaeImageProcessor`` so a ``config.json``
written by one is read by the other and a pipeline gets the same input tensors.

Masks use the same class with ``MASK_PROCESSOR_CONFIG`` (no ``[-1, 1]`` scaling, values
binarised at 0.5, converted to one channel): ``VaeImageProcessor.for_masks(vae_scale_factor)``.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from PIL import ImageFilter, ImageOps

from kernel.config import ConfigMixin, register_to_config
from kernel.outputs import numpy_to_pil

ImageInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor, Sequence[Any]]

#: PIL filters by the names the ``resample`` config key takes.
RESAMPLE_FILTERS = {
    "nearest": PIL.Image.Resampling.NEAREST,
    "linear": PIL.Image.Resampling.BILINEAR,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
}
RESIZE_MODES = ("default", "fill", "crop")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")

#: Settings for inpainting masks: keep ``[0, 1]``, threshold at 0.5, one channel.
MASK_PROCESSOR_CONFIG = {"do_normalize": False, "do_binarize": True, "do_convert_grayscale": True}


def _is_single_image(x: Any) -> bool:
    return isinstance(x, PIL.Image.Image) or (isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim in (2, 3))


def _is_image_or_batch(x: Any) -> bool:
    if isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 4:
        return True
    if _is_single_image(x):
        return True
    return isinstance(x, list) and len(x) > 0 and all(_is_single_image(i) for i in x)


class VaeImageProcessor(ConfigMixin):
    """Prepare images for a VAE and turn decoded tensors back into images.

    Args:
        do_resize: resize inputs so both sides are multiples of ``vae_scale_factor``
            (or to the ``height``/``width`` given to :meth:`preprocess`).
        vae_scale_factor: the VAE's spatial downsampling factor (``2 ** (len(block_out_channels) - 1)``).
        vae_latent_channels: a tensor with this many channels is taken to be latents already and
            passed through :meth:`preprocess` untouched.
        resample: PIL filter for resizing PIL inputs (one of ``RESAMPLE_FILTERS``).
        reducing_gap: PIL's ``reducing_gap`` optimisation for the default resize.
        do_normalize: map ``[0, 1]`` to ``[-1, 1]`` in :meth:`preprocess` (and back in :meth:`postprocess`).
        do_binarize: set values below 0.5 to 0 and the rest to 1 (masks).
        do_convert_rgb: convert PIL inputs to RGB.
        do_convert_grayscale: convert inputs to a single channel.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        do_resize: bool = True,
        vae_scale_factor: int = 8,
        vae_latent_channels: int = 4,
        resample: str = "lanczos",
        reducing_gap: int | None = None,
        do_normalize: bool = True,
        do_binarize: bool = False,
        do_convert_rgb: bool = False,
        do_convert_grayscale: bool = False,
    ) -> None:
        if do_convert_rgb and do_convert_grayscale:
            raise ValueError(
                "do_convert_rgb and do_convert_grayscale cannot both be True; pick at most one colour conversion"
            )
        if resample not in RESAMPLE_FILTERS:
            raise ValueError(f"resample={resample!r} is not supported; use one of {sorted(RESAMPLE_FILTERS)}")
        if not isinstance(vae_scale_factor, int) or vae_scale_factor < 1:
            raise ValueError(f"vae_scale_factor must be a positive int, got {vae_scale_factor!r}")

    @classmethod
    def for_masks(cls, vae_scale_factor: int = 8, **overrides: Any) -> "VaeImageProcessor":
        """A processor configured for inpainting masks (see ``MASK_PROCESSOR_CONFIG``)."""
        return cls(vae_scale_factor=vae_scale_factor, **{**MASK_PROCESSOR_CONFIG, **overrides})

    # ------------------------------------------------------------------ conversions
    numpy_to_pil = staticmethod(numpy_to_pil)  # ``[B,] H x W x C`` in ``[0, 1]`` -> PIL images

    @staticmethod
    def pil_to_numpy(images: PIL.Image.Image | list[PIL.Image.Image]) -> np.ndarray:
        """PIL image(s) -> ``B x H x W [x C]`` float32 in ``[0, 1]``."""
        if not isinstance(images, list):
            images = [images]
        return np.stack([np.asarray(img).astype(np.float32) / 255.0 for img in images], axis=0)

    @staticmethod
    def numpy_to_pt(images: np.ndarray) -> torch.Tensor:
        """``B x H x W [x C]`` -> ``B x C x H x W`` (a channel axis is added for ``B x H x W``)."""
        if images.ndim == 3:
            images = images[..., None]
        return torch.from_numpy(images.transpose(0, 3, 1, 2))

    @staticmethod
    def pt_to_numpy(images: torch.Tensor) -> np.ndarray:
        """``B x C x H x W`` -> float32 ``B x H x W x C`` on the CPU."""
        return images.detach().cpu().permute(0, 2, 3, 1).float().numpy()

    @staticmethod
    def normalize(images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """``[0, 1]`` -> ``[-1, 1]``."""
        return images * 2.0 - 1.0

    @staticmethod
    def denormalize(images: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` -> ``[0, 1]``, clamped."""
        return (images * 0.5 + 0.5).clamp(0, 1)

    @staticmethod
    def convert_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
        return image.convert("RGB")

    @staticmethod
    def convert_to_grayscale(image: PIL.Image.Image) -> PIL.Image.Image:
        return image.convert("L")

    @staticmethod
    def blur(image: PIL.Image.Image, blur_factor: int = 4) -> PIL.Image.Image:
        """Gaussian blur with radius ``blur_factor`` (softens mask edges before inpainting)."""
        return image.filter(ImageFilter.GaussianBlur(blur_factor))

    @staticmethod
    def binarize(image: torch.Tensor) -> torch.Tensor:
        """Threshold at 0.5 in place: below -> 0, otherwise 1."""
        image[image < 0.5] = 0
        image[image >= 0.5] = 1
        return image

    # ------------------------------------------------------------------ geometry
    @staticmethod
    def get_crop_region(mask_image: PIL.Image.Image, width: int, height: int, pad: int = 0) -> tuple[int, int, int, int]:
        """The box ``(x1, y1, x2, y2)`` around every non-zero mask pixel, grown by ``pad`` and then
        widened or heightened (centred, kept inside the image) to the aspect ratio ``width / height``.

        Used by ``padding_mask_crop``: inpaint only this box at full resolution, then paste it back.
        """
        mask = np.asarray(mask_image.convert("L"))
        h, w = mask.shape
        cols = np.flatnonzero((mask != 0).any(axis=0))
        rows = np.flatnonzero((mask != 0).any(axis=1))
        # An empty mask gives an empty box at the far edge, like scanning from both sides would.
        left, right = (int(cols[0]), w - 1 - int(cols[-1])) if cols.size else (w, w)
        top, bottom = (int(rows[0]), h - 1 - int(rows[-1])) if rows.size else (h, h)
        x1, y1 = max(left - pad, 0), max(top - pad, 0)
        x2, y2 = min(w - right + pad, w), min(h - bottom + pad, h)

        target = width / height
        if (x2 - x1) / (y2 - y1) > target:
            y1, y2 = _grow_span(y1, y2, int((x2 - x1) / target - (y2 - y1)), mask_image.height)
        else:
            x1, x2 = _grow_span(x1, x2, int((y2 - y1) * target - (x2 - x1)), mask_image.width)
        return x1, y1, x2, y2

    def get_default_height_width(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor,
        height: int | None = None,
        width: int | None = None,
    ) -> tuple[int, int]:
        """``(height, width)``: the given values or the image's, rounded down to multiples of the VAE factor.

        Arrays are ``B x H x W [x C]``; tensors are ``B x C x H x W``.
        """
        if isinstance(image, PIL.Image.Image):
            size_h, size_w = image.height, image.width
        elif isinstance(image, torch.Tensor):
            size_h, size_w = image.shape[2], image.shape[3]
        else:
            size_h, size_w = image.shape[1], image.shape[2]
        height = size_h if height is None else height
        width = size_w if width is None else width
        factor = self.config.vae_scale_factor
        return height - height % factor, width - width % factor

    def resize(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor,
        height: int,
        width: int,
        resize_mode: str = "default",
    ) -> PIL.Image.Image | np.ndarray | torch.Tensor:
        """Resize to ``height x width``.

        ``default`` stretches; ``fill`` keeps the aspect ratio and fills the borders by stretching
        the outermost rows/columns; ``crop`` keeps the aspect ratio and crops the excess.  ``fill``
        and ``crop`` take PIL images only; arrays and tensors use nearest-neighbour interpolation.
        """
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode={resize_mode!r} is not supported; use one of {list(RESIZE_MODES)}")
        if resize_mode != "default" and not isinstance(image, PIL.Image.Image):
            raise ValueError(f"resize_mode={resize_mode!r} needs PIL image input; got {type(image).__name__}")
        if isinstance(image, PIL.Image.Image):
            if resize_mode == "fill":
                return self._fit_and_fill(image, width, height)
            if resize_mode == "crop":
                return self._fit_and_crop(image, width, height)
            return image.resize(
                (width, height), resample=self._filter(), reducing_gap=self.config.reducing_gap
            )
        if isinstance(image, torch.Tensor):
            return F.interpolate(image, size=(height, width))
        return self.pt_to_numpy(F.interpolate(self.numpy_to_pt(image), size=(height, width)))

    def _filter(self):
        return RESAMPLE_FILTERS[self.config.resample]

    def _fit_and_crop(self, image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
        # Scale so the image covers the target box, then centre it (the overflow is cut off).
        wider = width / height > image.width / image.height
        new_w = width if wider else image.width * height // image.height
        new_h = height if not wider else image.height * width // image.width
        scaled = image.resize((new_w, new_h), resample=self._filter())
        canvas = PIL.Image.new("RGB", (width, height))
        canvas.paste(scaled, box=(width // 2 - new_w // 2, height // 2 - new_h // 2))
        return canvas

    def _fit_and_fill(self, image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
        # Scale so the image fits inside the box, centre it, and stretch its edge rows (or
        # columns) over the empty bands (the "resize and fill" of A1111's img2img).
        target, source = width / height, image.width / image.height
        new_w = width if target < source else image.width * height // image.height
        new_h = height if target >= source else image.height * width // image.width
        scaled = image.resize((new_w, new_h), resample=self._filter())
        canvas = PIL.Image.new("RGB", (width, height))
        canvas.paste(scaled, box=(width // 2 - new_w // 2, height // 2 - new_h // 2))
        if target < source:
            band = height // 2 - new_h // 2
            if band > 0:
                top = scaled.resize((width, band), box=(0, 0, width, 0))
                bottom = scaled.resize((width, band), box=(0, scaled.height, width, scaled.height))
                canvas.paste(top, box=(0, 0))
                canvas.paste(bottom, box=(0, band + new_h))
        elif target > source:
            band = width // 2 - new_w // 2
            if band > 0:
                left = scaled.resize((band, height), box=(0, 0, 0, height))
                right = scaled.resize((band, height), box=(scaled.width, 0, scaled.width, height))
                canvas.paste(left, box=(0, 0))
                canvas.paste(right, box=(band + new_w, 0))
        return canvas

    # ------------------------------------------------------------------ pipeline entry points
    def preprocess(
        self,
        image: ImageInput,
        height: int | None = None,
        width: int | None = None,
        resize_mode: str = "default",
        crops_coords: tuple[int, int, int, int] | None = None,
    ) -> torch.Tensor:
        """Images -> a ``B x C x H x W`` float tensor ready for ``vae.encode``.

        Accepts a PIL image, a ``[B x] H x W [x C]`` array in ``[0, 1]``, a ``[B x] C x H x W``
        tensor in ``[0, 1]``, or a list of any one of these.  A tensor with
        ``vae_latent_channels`` channels is returned unchanged (it is already latents).
        Inputs that already hold negative values are taken to be in ``[-1, 1]`` and not rescaled.
        ``crops_coords`` ``(x1, y1, x2, y2)`` crops PIL inputs before resizing.
        """
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode={resize_mode!r} is not supported; use one of {list(RESIZE_MODES)}")
        cfg = self.config
        if cfg.do_convert_grayscale and isinstance(image, (torch.Tensor, np.ndarray)) and image.ndim == 3:
            # A 3-d input to a one-channel processor: a tensor is B x H x W; an array is either a single
            # H x W x 1 image or a B x H x W batch.
            if isinstance(image, torch.Tensor):
                image = image.unsqueeze(1)
            elif image.shape[-1] == 1:
                image = image[None]
            else:
                image = image[..., None]
        if isinstance(image, list) and image and isinstance(image[0], (np.ndarray, torch.Tensor)) and image[0].ndim == 4:
            warnings.warn("a list of 4-d batches is deprecated; concatenate them into one batch", FutureWarning, stacklevel=2)
            image = np.concatenate(image, axis=0) if isinstance(image[0], np.ndarray) else torch.cat(image, dim=0)
        if not _is_image_or_batch(image):
            raise ValueError(
                "image must be a PIL.Image.Image, a numpy.ndarray, a torch.Tensor or a list of one of these; "
                f"got {type(image).__name__}"
            )
        items = image if isinstance(image, list) else [image]
        first = items[0]

        if isinstance(first, PIL.Image.Image):
            if crops_coords is not None:
                items = [i.crop(crops_coords) for i in items]
            if cfg.do_resize:
                height, width = self.get_default_height_width(items[0], height, width)
                items = [self.resize(i, height, width, resize_mode=resize_mode) for i in items]
            if cfg.do_convert_rgb:
                items = [self.convert_to_rgb(i) for i in items]
            elif cfg.do_convert_grayscale:
                items = [self.convert_to_grayscale(i) for i in items]
            batch = self.numpy_to_pt(self.pil_to_numpy(items))
        elif isinstance(first, np.ndarray):
            stacked = np.concatenate(items, axis=0) if first.ndim == 4 else np.stack(items, axis=0)
            batch = self.numpy_to_pt(stacked)
            height, width = self.get_default_height_width(batch, height, width)
            if cfg.do_resize:
                batch = self.resize(batch, height, width)
        else:
            batch = torch.cat(items, dim=0) if first.ndim == 4 else torch.stack(items, dim=0)
            if cfg.do_convert_grayscale and batch.ndim == 3:
                batch = batch.unsqueeze(1)
            if batch.shape[1] == cfg.vae_latent_channels:
                return batch
            height, width = self.get_default_height_width(batch, height, width)
            if cfg.do_resize:
                batch = self.resize(batch, height, width)

        normalize = cfg.do_normalize
        if normalize and batch.min() < 0:
            warnings.warn(
                "image already holds values below 0, so it is taken to be in [-1, 1] and not rescaled; "
                "pass images in [0, 1]",
                FutureWarning,
                stacklevel=2,
            )
            normalize = False
        if normalize:
            batch = self.normalize(batch)
        if cfg.do_binarize:
            batch = self.binarize(batch)
        return batch

    def postprocess(
        self,
        image: torch.Tensor,
        output_type: str = "pil",
        do_denormalize: list[bool] | None = None,
    ) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """A decoded ``B x C x H x W`` tensor -> ``output_type`` (``pil``, ``np``, ``pt`` or ``latent``).

        ``do_denormalize`` (one flag per image) overrides ``do_normalize`` for mapping back to ``[0, 1]``;
        ``latent`` returns the input unchanged.
        """
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"postprocess takes a torch.Tensor image, got {type(image).__name__}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; use one of {list(OUTPUT_TYPES)}")
        if output_type == "latent":
            return image
        if do_denormalize is None:
            if self.config.do_normalize:
                image = self.denormalize(image)
        else:
            if len(do_denormalize) != image.shape[0]:
                raise ValueError(
                    f"do_denormalize has {len(do_denormalize)} flags for a batch of {image.shape[0]}; give one per image"
                )
            image = torch.stack([self.denormalize(x) if flag else x for x, flag in zip(image, do_denormalize)])
        if output_type == "pt":
            return image
        array = self.pt_to_numpy(image)
        if output_type == "np":
            return array
        return self.numpy_to_pil(array)

    def apply_overlay(
        self,
        mask: PIL.Image.Image,
        init_image: PIL.Image.Image,
        image: PIL.Image.Image,
        crop_coords: tuple[int, int, int, int] | None = None,
    ) -> PIL.Image.Image:
        """Paste the unmasked part of ``init_image`` over the generated ``image``.

        With ``crop_coords`` (from ``padding_mask_crop``), ``image`` covers only that box: it is
        first resized into it on a canvas the size of ``init_image``.
        """
        width, height = init_image.width, init_image.height
        # Premultiplied alpha ("RGBa") keeps the composite exact where the mask is soft.
        keep = PIL.Image.new("RGBa", (width, height))
        keep.paste(init_image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
        keep = keep.convert("RGBA")
        if crop_coords is not None:
            x1, y1, x2, y2 = crop_coords
            canvas = PIL.Image.new("RGBA", (width, height))
            canvas.paste(self.resize(image, height=y2 - y1, width=x2 - x1, resize_mode="crop"), (x1, y1))
            image = canvas.convert("RGB")
        out = image.convert("RGBA")
        out.alpha_composite(keep)
        return out.convert("RGB")


def _grow_span(lo: int, hi: int, extra: int, limit: int) -> tuple[int, int]:
    """Widen ``[lo, hi)`` by ``extra`` pixels split around it, shifted back inside ``[0, limit]``."""
    lo -= extra // 2
    hi += extra - extra // 2
    if hi >= limit:
        lo -= hi - limit
        hi = limit
    if lo < 0:
        hi -= lo
        lo = 0
    if hi >= limit:
        hi = limit
    return lo, hi
