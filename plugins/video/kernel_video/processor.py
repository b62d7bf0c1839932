"""Videos in, videos out: :class:`VideoProcessor` is :class:`VaeImageProcessor` applied frame by frame.

A video tensor for a VAE-based video pipeline is ``(B, C, F, H, W)`` (channels before frames, as the
motion UNets and 3-D VAEs take it).  :meth:`VideoProcessor.preprocess_video` builds one from user
videos; :meth:`VideoProcessor.postprocess_video` turns a decoded one into frames.  Config keys and
numbers are those of Diffusers' ``VideoProcessor``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from kernel_autoencoders.image_processor import VaeImageProcessor

VIDEO_OUTPUT_TYPES = ("np", "pt", "pil")


def _is_frame(x: Any) -> bool:
    """One image: a PIL image, or a 2-D / 3-D array or tensor."""
    return isinstance(x, PIL.Image.Image) or (isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim in (2, 3))


def _is_video(x: Any) -> bool:
    """One video: a 4-D array / tensor, or a non-empty list of frames (a single PIL image counts too)."""
    if isinstance(x, PIL.Image.Image):
        return True
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x.ndim == 4
    return isinstance(x, list) and len(x) > 0 and all(_is_frame(f) for f in x)


class VideoProcessor(VaeImageProcessor):
    """Prepare videos for a VAE and turn decoded videos back into frames (see the module docstring)."""

    def _as_videos(self, video: Any) -> list:
        """A list of videos, each a 4-D array / tensor or a list of frames."""
        if isinstance(video, list) and video and isinstance(video[0], (np.ndarray, torch.Tensor)) and video[0].ndim == 5:
            warnings.warn("a list of 5-d videos is deprecated; concatenate them along the batch axis", FutureWarning,
                          stacklevel=3)
            video = np.concatenate(video) if isinstance(video[0], np.ndarray) else torch.cat(video)
        if isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim == 5:
            return list(video)
        if _is_video(video):
            return [video]
        if isinstance(video, list) and video and all(_is_video(v) for v in video):
            return list(video)
        raise ValueError(
            "video must be a list of frames (PIL images, H x W x C arrays or C x H x W tensors), a list of such "
            "lists, a 4-D array (F x H x W x C) or tensor (F x C x H x W), a list of those, or a 5-D array "
            f"(B x F x H x W x C) or tensor (B x F x C x H x W); got {type(video).__name__}"
        )

    def preprocess_video(self, video: Any, height: int | None = None, width: int | None = None,
                         **kwargs: Any) -> torch.Tensor:
        """Videos -> a ``(B, C, F, H, W)`` float tensor (each frame through :meth:`preprocess`, which takes
        ``kwargs`` such as ``resize_mode``).  All videos of a batch must have the same frame count."""
        videos = [self.preprocess(v, height=height, width=width, **kwargs) for v in self._as_videos(video)]
        shapes = {tuple(v.shape) for v in videos}
        if len(shapes) > 1:
            raise ValueError(f"the videos of a batch must have the same number and size of frames, got "
                             f"(frames, channels, height, width) {sorted(shapes)}")
        return torch.stack(videos, dim=0).permute(0, 2, 1, 3, 4)

    def postprocess_video(self, video: torch.Tensor, output_type: str = "np", **kwargs: Any):
        """A decoded ``(B, C, F, H, W)`` tensor -> ``np`` ``(B, F, H, W, C)``, ``pt`` ``(B, F, C, H, W)`` or
        ``pil`` (a list of lists of frames); ``kwargs`` go to :meth:`postprocess`."""
        if not isinstance(video, torch.Tensor) or video.ndim != 5:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"postprocess_video takes a (batch, channels, frames, height, width) tensor, got {shape}")
        if output_type not in VIDEO_OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported for videos; use one of "
                             f"{list(VIDEO_OUTPUT_TYPES)}")
        outputs = [self.postprocess(v.permute(1, 0, 2, 3), output_type, **kwargs) for v in video]
        if output_type == "np":
            return np.stack(outputs)
        if output_type == "pt":
            return torch.stack(outputs)
        return outputs

    @staticmethod
    def classify_height_width_bin(height: int, width: int, ratios: dict) -> tuple[int, int]:
        """The ``(height, width)`` of the aspect-ratio bin (``{"ratio": (h, w)}``) closest to ``height / width``."""
        aspect = float(height / width)
        nearest = min(ratios, key=lambda r: abs(float(r) - aspect))
        h, w = ratios[nearest]
        return int(h), int(w)

    @staticmethod
    def resize_and_crop_tensor(samples: torch.Tensor, new_width: int, new_height: int) -> torch.Tensor:
        """Scale ``(N, C, T, H, W)`` videos to cover ``new_height x new_width`` (bilinear), then crop the centre."""
        n, c, t, h, w = samples.shape
        if (h, w) == (new_height, new_width):
            return samples
        ratio = max(new_height / h, new_width / w)
        rh, rw = int(h * ratio), int(w * ratio)
        frames = samples.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
        frames = F.interpolate(frames, size=(rh, rw), mode="bilinear", align_corners=False)
        top, left = (rh - new_height) // 2, (rw - new_width) // 2
        frames = frames[:, :, top:top + new_height, left:left + new_width]
        return frames.reshape(n, t, c, new_height, new_width).permute(0, 2, 1, 3, 4)
