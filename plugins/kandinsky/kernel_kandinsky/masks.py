"""Kandinsky 2.2's inpainting inputs: image and mask to tensors, and the shrunken "keep" mask on the latent grid.

Conventions (Diffusers >= 0.19): white (1) in ``mask_image`` is repainted, black (0) kept.  The decoder
works with the *keep* mask (``1 - mask``), which on the latent grid is shrunk by one cell wherever a
repainted cell touches it, so the kept region's border is repainted too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch


def _check_range(x: torch.Tensor, lo: float, hi: float, name: str) -> None:
    if x.min() < lo or x.max() > hi:
        raise ValueError(f"{name} tensor values must lie in [{lo:g}, {hi:g}], got [{x.min().item():.3g}, "
                         f"{x.max().item():.3g}]")


def _tensor_inputs(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if image.ndim == 3:
        if image.shape[0] != 3:
            raise ValueError(f"an unbatched image tensor must be (3, H, W), got {tuple(image.shape)}")
        image = image.unsqueeze(0)
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask.unsqueeze(0) if mask.shape[0] == 1 else mask.unsqueeze(1)
    if image.ndim != 4 or mask.ndim != 4:
        raise ValueError(f"image and mask_image tensors must be (B, 3, H, W) and (B, 1, H, W), got "
                         f"{tuple(image.shape)} and {tuple(mask.shape)}")
    if image.shape[-2:] != mask.shape[-2:] or image.shape[0] != mask.shape[0]:
        raise ValueError(f"image {tuple(image.shape)} and mask_image {tuple(mask.shape)} must have the same batch "
                         "size and height x width")
    _check_range(image, -1, 1, "image")
    _check_range(mask, 0, 1, "mask_image")
    return image.to(torch.float32), mask.clone()


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, list) else [x]


def resize_pil(x: Any, height: int, width: int, resample: int, reducing_gap: float | None = None) -> Any:
    """PIL images (alone or in a list) resized to ``height x width``; anything else unchanged."""
    if isinstance(x, PIL.Image.Image):
        return x.resize((width, height), resample=resample, reducing_gap=reducing_gap)
    if isinstance(x, list) and x and all(isinstance(i, PIL.Image.Image) for i in x):
        return [resize_pil(i, height, width, resample, reducing_gap) for i in x]
    return x


def _array_inputs(image: Any, mask: Any, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = _as_list(image), _as_list(mask)
    if isinstance(images[0], PIL.Image.Image):
        arrays = [np.array(i.convert("RGB")) for i in resize_pil(images, height, width, PIL.Image.BICUBIC, 1)]
    elif isinstance(images[0], np.ndarray):
        arrays = list(images)
    else:
        raise TypeError(f"image must be a PIL image, a numpy array, a tensor or a list of them, got "
                        f"{type(images[0]).__name__}")
    pixels = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32)) / 127.5 - 1.0
    if isinstance(masks[0], PIL.Image.Image):
        m = np.stack([np.array(i.convert("L")) for i in resize_pil(masks, height, width, PIL.Image.LANCZOS)])
        m = m[:, None].astype(np.float32) / 255.0
    elif isinstance(masks[0], np.ndarray):
        m = np.stack(masks)[:, None].astype(np.float32)
    else:
        raise TypeError(f"mask_image must be a PIL image, a numpy array, a tensor or a list of them, got "
                        f"{type(masks[0]).__name__}")
    return pixels, torch.from_numpy(m)


def prepare_image_and_keep_mask(image: Any, mask_image: Any, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixels in [-1, 1] (B, 3, H, W), keep mask (B, 1, H, W) of 0/1)`` from tensors, PIL images or arrays.

    PIL inputs are resized to ``height x width`` (bicubic image, Lanczos mask); tensors and arrays are
    taken at their own size.  The mask is binarised at 0.5.
    """
    if isinstance(image, torch.Tensor) != isinstance(mask_image, torch.Tensor):
        raise TypeError(f"image and mask_image must both be tensors or both not, got {type(image).__name__} and "
                        f"{type(mask_image).__name__}")
    if isinstance(image, torch.Tensor):
        pixels, mask = _tensor_inputs(image, mask_image)
    else:
        pixels, mask = _array_inputs(image, mask_image, height, width)
    mask = (mask >= 0.5).to(torch.float32)
    return pixels, 1 - mask


#: Neighbours a repainted cell takes out of the keep mask: up, left, up-left, down, right, down-right.
_SHRINK = ((-1, 0), (0, -1), (-1, -1), (1, 0), (0, 1), (1, 1))


def shrink_keep_mask(keep: torch.Tensor) -> torch.Tensor:
    """Zero the cells of ``keep`` ``(B, 1, h, w)`` next to a repainted (not 1) cell, in the six directions
    Kandinsky's reference implementation uses."""
    out = keep.clone()
    dropped = keep != 1
    h, w = keep.shape[-2:]
    for dy, dx in _SHRINK:
        target = out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
        source = dropped[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        target.masked_fill_(source, 0)
    return out
