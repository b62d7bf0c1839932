"""A Canny edge detector (Canny, "A Computational Approach to Edge Detection", IEEE TPAMI 1986) in NumPy, to
make control images for the canny ControlNets and T2I-Adapters without OpenCV.

The four steps of the paper: Gaussian smoothing, Sobel gradients, non-maximum suppression along the gradient
direction (edges one pixel thin) and hysteresis with two thresholds (a pixel above ``high_threshold`` starts
an edge, which continues through 8-connected pixels above ``low_threshold``).  The thresholds apply to the
Euclidean Sobel gradient magnitude of 0-255 intensities, OpenCV's scale: the result is that of
``cv2.Canny(cv2.GaussianBlur(img, (0, 0), sigma), low, high, L2gradient=True)`` to within a pixel.  On a
colour image each pixel takes the channel with the strongest gradient, as OpenCV does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image

_SOBEL_SMOOTH = np.array([1.0, 2.0, 1.0])
_SOBEL_DIFF = np.array([-1.0, 0.0, 1.0])


def _correlate(x: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """1-D correlation of ``x`` ``(H, W, C)`` along ``axis`` (0 or 1), borders mirrored (OpenCV's default)."""
    r = len(kernel) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    padded = np.pad(x, pad, mode="reflect")
    n = x.shape[axis]
    out = np.zeros_like(x)
    for i, k in enumerate(kernel):
        if k:
            out += k * (padded[i:i + n] if axis == 0 else padded[:, i:i + n])
    return out


def _gaussian(sigma: float) -> np.ndarray:
    r = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _as_array(image: Any) -> np.ndarray:
    """``(H, W, C)`` float64 intensities in 0-255 from a PIL image or an ``(H, W)`` / ``(H, W, C)`` array."""
    if isinstance(image, PIL.Image.Image):
        image = image.convert("RGB") if image.mode not in ("L", "RGB") else image
        x = np.asarray(image, dtype=np.float64)
    elif isinstance(image, np.ndarray):
        x = image.astype(np.float64)
        if image.dtype != np.uint8 and x.size and x.max() <= 1.0:
            x = x * 255.0  # float images in [0, 1]
    else:
        raise TypeError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[-1] not in (1, 3, 4) or min(x.shape[:2]) < 2:
        raise ValueError(f"image must be (H, W) or (H, W, 1/3/4) with H, W >= 2, got shape {x.shape}")
    return x[..., :3]


def _gradients(x: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Sobel ``(gx, gy)`` per pixel (``y`` pointing down), from the channel with the largest magnitude."""
    if sigma > 0:
        g = _gaussian(sigma)
        x = _correlate(_correlate(x, g, 0), g, 1)
    gx = _correlate(_correlate(x, _SOBEL_DIFF, 1), _SOBEL_SMOOTH, 0)
    gy = _correlate(_correlate(x, _SOBEL_DIFF, 0), _SOBEL_SMOOTH, 1)
    strongest = np.argmax(gx**2 + gy**2, axis=-1)[..., None]
    return np.take_along_axis(gx, strongest, -1)[..., 0], np.take_along_axis(gy, strongest, -1)[..., 0]


def _thin(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Non-maximum suppression: keep a pixel only where its magnitude peaks along the gradient direction
    (rounded to 0, 45, 90 or 135 degrees).  Ties keep the pixel before the step, so a step edge stays one
    pixel thin."""
    m = np.pad(magnitude, 1)
    h, w = magnitude.shape
    angle = np.rad2deg(np.arctan2(gy, gx)) % 180
    sector = (((angle + 22.5) // 45) % 4).astype(np.int8)  # 0: horizontal gradient, 1: 45, 2: vertical, 3: 135
    offsets = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}  # (dy, dx) along the gradient
    keep = np.zeros_like(magnitude, dtype=bool)
    for s, (dy, dx) in offsets.items():
        ahead = m[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        behind = m[1 - dy:1 - dy + h, 1 - dx:1 - dx + w]
        keep |= (sector == s) & (magnitude > behind) & (magnitude >= ahead)
    return np.where(keep, magnitude, 0.0)


def _hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """``strong`` plus every ``weak`` pixel 8-connected to it through ``weak`` pixels (a flood fill)."""
    h, w = strong.shape
    width = w + 2
    edges = np.pad(strong, 1).ravel()
    open_ = np.pad(weak & ~strong, 1).ravel()
    steps = [dy * width + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    # Only strong pixels with a weak neighbour can grow an edge.
    near = np.zeros_like(open_)
    for s in steps:
        near |= np.roll(open_, -s)
    stack = list(np.flatnonzero(edges & near))
    while stack:
        i = stack.pop()
        for s in steps:
            j = i + s
            if open_[j]:
                open_[j] = False
                edges[j] = True
                stack.append(j)
    return edges.reshape(h + 2, width)[1:-1, 1:-1]


def canny(image: Any, low_threshold: float = 100, high_threshold: float = 200, *,
          sigma: float = 1.0) -> PIL.Image.Image:
    """Canny edges of ``image`` (a PIL image or an ``(H, W[, C])`` array, uint8 or floats in ``[0, 1]``) as a
    grayscale PIL image: 255 on edges, 0 elsewhere (``.convert("RGB")`` for a three-channel control image).

    ``low_threshold`` / ``high_threshold``: hysteresis thresholds on the Sobel gradient magnitude (0-255
    intensities, as in ``cv2.Canny``); ``sigma``: the Gaussian blur's standard deviation in pixels (0: none).
    """
    for name, value in (("low_threshold", low_threshold), ("high_threshold", high_threshold), ("sigma", sigma)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if low_threshold > high_threshold:
        raise ValueError(f"low_threshold ({low_threshold}) must not exceed high_threshold ({high_threshold})")
    gx, gy = _gradients(_as_array(image), float(sigma))
    magnitude = _thin(np.hypot(gx, gy), gx, gy)
    edges = _hysteresis(magnitude > high_threshold, magnitude > low_threshold)
    return PIL.Image.fromarray(edges.astype(np.uint8) * 255, mode="L")
