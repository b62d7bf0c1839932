"""Writing and reading video files: ``export_to_video`` (H.264 through PyAV), ``export_to_gif`` (Pillow),
``load_video`` (PyAV / Pillow, local files only).

Frames are what a video pipeline returns for one video: a list of PIL images, a list of ``H x W [x C]``
arrays (floats in ``[0, 1]`` or ``uint8``), an ``F x H x W x C`` array (``output_type="np"``) or an
``F x C x H x W`` tensor in ``[0, 1]`` (``output_type="pt"``).  Every write goes to a temporary file
beside the target that is renamed onto it when complete (:func:`kernel.io.atomic_path`), so a failed
export never leaves a truncated file behind.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image

from kernel.io import atomic_path

logger = logging.getLogger(__name__)

#: Container formats ``export_to_video`` writes, by file extension (PyAV / FFmpeg format names).
VIDEO_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
#: Extensions ``load_video`` reads.
READABLE = (".mp4", ".mov", ".mkv", ".m4v", ".avi", ".webm", ".gif")


# ----------------------------------------------------------------------------- frames
def _frame_array(frame: Any, index: int) -> np.ndarray:
    """One frame as an ``H x W x 3`` ``uint8`` array."""
    if isinstance(frame, PIL.Image.Image):
        return np.asarray(frame.convert("RGB"))
    if hasattr(frame, "detach") and hasattr(frame, "cpu"):  # a torch tensor: C x H x W in [0, 1]
        if frame.ndim != 3:
            raise ValueError(f"frames[{index}] is a tensor of shape {tuple(frame.shape)}; a tensor frame must be "
                             "C x H x W")
        frame = frame.detach().cpu().float().permute(1, 2, 0).numpy()
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frames[{index}] is a {type(frame).__name__}; frames must be PIL images, numpy arrays "
                        "(H x W [x C]) or torch tensors (C x H x W)")
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.ndim != 3 or frame.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames[{index}] has shape {frame.shape}; a frame array must be H x W, H x W x 1, "
                         "H x W x 3 or H x W x 4")
    if frame.dtype != np.uint8:
        if not np.issubdtype(frame.dtype, np.floating):
            raise ValueError(f"frames[{index}] has dtype {frame.dtype}; use uint8, or floats in [0, 1]")
        frame = (np.clip(frame, 0.0, 1.0) * 255).round().astype(np.uint8)
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    return np.ascontiguousarray(frame[..., :3])


def as_frames(frames: Any) -> list[np.ndarray]:
    """The frames of one video as ``H x W x 3`` ``uint8`` arrays of one size (see the module docstring)."""
    if hasattr(frames, "detach") and getattr(frames, "ndim", 0) == 4:  # F x C x H x W tensor
        frames = list(frames)
    elif isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"frames as one array must be F x H x W x C, got shape {frames.shape}")
        frames = list(frames)
    elif isinstance(frames, (str, bytes)) or not isinstance(frames, Sequence):
        raise TypeError(f"frames must be a list of frames, an F x H x W x C array or an F x C x H x W tensor, "
                        f"got {type(frames).__name__}")
    if len(frames) == 0:
        raise ValueError("frames is empty; a video needs at least one frame")
    out = [_frame_array(f, i) for i, f in enumerate(frames)]
    size = out[0].shape[:2]
    for i, f in enumerate(out):
        if f.shape[:2] != size:
            raise ValueError(f"frames[{i}] is {f.shape[1]}x{f.shape[0]} (WxH) but frames[0] is {size[1]}x{size[0]}; "
                             "every frame of a video must have the same size")
    return out


def _check_fps(fps: Any) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return fps


def _target(path: Any, suffix: str, allowed: Sequence[str], what: str, hint: str = "") -> Path:
    if path is None:
        fd, name = tempfile.mkstemp(suffix=suffix)
        os.close(fd)
        return Path(name)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path (str or os.PathLike), got {type(path).__name__}")
    target = Path(path)
    if target.suffix.lower() not in allowed:
        raise ValueError(f"{what}={str(path)!r} has extension {target.suffix!r}; use one of {list(allowed)}{hint}")
    if target.is_dir():
        raise ValueError(f"{what}={str(path)!r} is a folder; give a file path")
    return target


# ----------------------------------------------------------------------------- export
def export_to_video(video_frames: Any, output_video_path: str | os.PathLike | None = None, fps: float = 10,
                    quality: float | None = 5.0, bitrate: int | None = None, macro_block_size: int | None = 16) -> str:
    """Write ``video_frames`` as an H.264 video (``.mp4``, ``.mov`` or ``.mkv``) and return its path.

    ``fps``: frames per second.  ``quality`` (0 worst to 10 best) sets a constant rate factor; ``bitrate``
    (bits per second) a constant bitrate instead.  ``macro_block_size``: frames whose sides are not
    multiples of it are scaled up to the next multiple, as most players need (``None`` or 1 keeps the
    size; odd sizes are then written in 4:4:4).  ``output_video_path=None`` writes a temporary ``.mp4``.
    """
    import av

    fps = _check_fps(fps)
    target = _target(output_video_path, ".mp4", tuple(VIDEO_FORMATS), "output_video_path",
                     " (export_to_gif writes .gif)")
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, (int, float))
                                or not 0 <= quality <= 10):
        raise ValueError(f"quality must be a number in [0, 10] or None, got {quality!r}")
    if bitrate is not None and (isinstance(bitrate, bool) or not isinstance(bitrate, int) or bitrate <= 0):
        raise ValueError(f"bitrate must be a positive int (bits per second) or None, got {bitrate!r}")
    if macro_block_size is not None and (isinstance(macro_block_size, bool) or not isinstance(macro_block_size, int)
                                         or macro_block_size < 1):
        raise ValueError(f"macro_block_size must be a positive int or None, got {macro_block_size!r}")
    frames = as_frames(video_frames)
    height, width = frames[0].shape[:2]
    block = macro_block_size or 1
    new_h, new_w = -(-height // block) * block, -(-width // block) * block
    if (new_h, new_w) != (height, width):
        logger.warning("export_to_video: frames of %dx%d scaled to %dx%d (multiples of macro_block_size=%d)",
                       width, height, new_w, new_h, block)
        frames = [np.asarray(PIL.Image.fromarray(f).resize((new_w, new_h), PIL.Image.Resampling.BICUBIC))
                  for f in frames]
    pix_fmt = "yuv420p" if new_h % 2 == 0 and new_w % 2 == 0 else "yuv444p"

    with atomic_path(target) as tmp:
        with av.open(str(tmp), mode="w", format=VIDEO_FORMATS[target.suffix.lower()]) as container:
            rate = int(fps) if float(fps).is_integer() else Fraction(fps).limit_denominator(1001)
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = new_w, new_h, pix_fmt
            if bitrate is not None:
                stream.bit_rate = bitrate
            elif quality is not None:
                stream.options = {"crf": str(round(51 * (1 - quality / 10)))}
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return str(target)


def export_to_gif(image: Any, output_gif_path: str | os.PathLike | None = None, fps: float = 10) -> str:
    """Write the frames as a looping GIF (``1000 // fps`` ms per frame) and return its path."""
    fps = _check_fps(fps)
    target = _target(output_gif_path, ".gif", (".gif",), "output_gif_path", " (export_to_video writes .mp4)")
    frames = [PIL.Image.fromarray(f) for f in as_frames(image)]
    with atomic_path(target) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], optimize=False,
                       duration=max(1, int(1000 // fps)), loop=0)
    return str(target)


# ----------------------------------------------------------------------------- load
def load_video(video: str | os.PathLike,
               convert_method: Callable[[list[PIL.Image.Image]], list[PIL.Image.Image]] | None = None,
               return_fps: bool = False) -> list[PIL.Image.Image] | tuple[list[PIL.Image.Image], float | None]:
    """The frames of a local video file (``.mp4``, ``.mov``, ``.mkv``, ``.m4v``, ``.avi``, ``.webm``, ``.gif``)
    as RGB PIL images, or as ``convert_method(frames)``; with ``return_fps`` also its frame rate (None
    when the file does not record one).  URLs are refused: nothing is downloaded."""
    if not isinstance(video, (str, os.PathLike)):
        raise TypeError(f"video must be a path to a local file (str or os.PathLike), got {type(video).__name__}")
    text = os.fspath(video)
    if text.startswith(("http://", "https://")):
        raise ValueError(f"video={text!r} is a URL; load_video reads local files only (nothing is downloaded): "
                         "download the file first and pass its path")
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"video={text!r} is not a file")
    suffix = path.suffix.lower()
    if suffix not in READABLE:
        raise ValueError(f"video={text!r} has extension {path.suffix!r}; load_video reads {list(READABLE)}")
    if convert_method is not None and not callable(convert_method):
        raise TypeError(f"convert_method must be a callable taking and returning a list of PIL images, got "
                        f"{type(convert_method).__name__}")
    fps: float | None
    if suffix == ".gif":
        frames, fps = _read_gif(path)
    else:
        frames, fps = _read_av(path)
    frames = convert_method(frames) if convert_method is not None else [f.convert("RGB") for f in frames]
    return (frames, fps) if return_fps else frames


def _read_gif(path: Path) -> tuple[list[PIL.Image.Image], float | None]:
    try:
        with PIL.Image.open(path) as gif:
            duration = gif.info.get("duration")
            frames = []
            for i in range(getattr(gif, "n_frames", 1)):
                gif.seek(i)
                frames.append(gif.copy())
    except (OSError, PIL.UnidentifiedImageError) as err:
        raise ValueError(f"video={str(path)!r} is not a readable GIF ({err})") from None
    return frames, (1000 / duration if duration else None)


def _read_av(path: Path) -> tuple[list[PIL.Image.Image], float | None]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"video={str(path)!r} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            frames = [frame.to_image() for frame in container.decode(stream)]
    except av.FFmpegError as err:
        raise ValueError(f"video={str(path)!r} could not be decoded ({err})") from None
    return frames, (float(rate) if rate else None)
