"""Region masks for IP-Adapter images (Diffusers' ``IPAdapterMaskProcessor``).

Each IP-Adapter image may be confined to a region of the output: ``cross_attention_kwargs=
{"ip_adapter_masks": masks}`` with one ``(1, images, H, W)`` tensor per adapter (``None`` for an
adapter without masks).  :meth:`IPAdapterMaskProcessor.preprocess` turns PIL images / arrays into
binary ``(n, 1, H, W)`` masks; :meth:`IPAdapterMaskProcessor.downsample` resizes one to an attention
layer's token grid inside the attention processor.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from kernel.config import register_to_config
from kernel_autoencoders.image_processor import VaeImageProcessor


def mask_grid(num_queries: int, aspect: float) -> tuple[int, int]:
    """``(rows, cols)`` of the token grid of a layer with ``num_queries`` tokens for a ``width / height``
    aspect ratio: the rows from the square root, rounded up when they do not divide the tokens (as
    Diffusers does, so masks line up with its numbers)."""
    rows = int(math.sqrt(num_queries / aspect))
    rows += int(num_queries % rows != 0)
    return rows, num_queries // rows


class IPAdapterMaskProcessor(VaeImageProcessor):
    """Binary single-channel masks in ``[0, 1]`` (resized to multiples of ``vae_scale_factor``)."""

    @register_to_config
    def __init__(self, do_resize: bool = True, vae_scale_factor: int = 8, resample: str = "lanczos",
                 do_normalize: bool = False, do_binarize: bool = True, do_convert_grayscale: bool = True):
        super().__init__(do_resize=do_resize, vae_scale_factor=vae_scale_factor, resample=resample,
                         do_normalize=do_normalize, do_binarize=do_binarize, do_convert_grayscale=do_convert_grayscale)

    @staticmethod
    def downsample(mask: torch.Tensor, batch_size: int, num_queries: int, value_embed_dim: int) -> torch.Tensor:
        """``mask`` ``(1 | batch, H, W)`` -> ``(batch, num_queries, value_embed_dim)`` weights for the tokens of an
        attention layer (bicubic resize to its grid, flattened; padded with zeros or cut when the mask's
        aspect ratio does not match the image's, with a warning)."""
        rows, cols = mask_grid(num_queries, mask.shape[2] / mask.shape[1])
        small = F.interpolate(mask.unsqueeze(0), size=(rows, cols), mode="bicubic").squeeze(0)
        if small.shape[0] < batch_size:
            small = small.repeat(batch_size, 1, 1)
        small = small.reshape(small.shape[0], -1)
        area = rows * cols
        if area != num_queries:
            warnings.warn("the aspect ratio of the IP-Adapter mask does not match the output image's; resize the "
                          "masks to the output size (IPAdapterMaskProcessor.preprocess(..., height=, width=))",
                          UserWarning, stacklevel=2)
            small = F.pad(small, (0, num_queries - area)) if area < num_queries else small[:, :num_queries]
        return small[:, :, None].expand(-1, -1, value_embed_dim)
