"""A detector for shapes-dataset pictures: colour, shape, position, size and background.

No learning: plain measurements on the picture.

1. Background: the median colour of the one-pixel border, named by the nearest background colour.
2. Foreground: pixels farther than :data:`FOREGROUND_DISTANCE` from that median; the largest
   4-connected blob is the shape (specks elsewhere are ignored).
3. Colour: the median of the blob's most saturated half (anti-aliased edges mix with the
   background), named by the nearest foreground colour.
4. Shape: the blob's fill ratio (area over bounding-box area) and the occupancy of a 3x3 grid
   over its bounding box (corners filled or empty, arms, centre), compared with the same
   measurements of each shape drawn by :func:`kernel_shapes_model.data.render`; the nearest wins.
   Squares fill the corners, triangles only the bottom ones, crosses the edges but no corners,
   circles fill ~79 %, stars ~40 %.
5. Position: the blob's centroid, named by the nearest of the five anchor points.
6. Size: the longer side of the bounding box against the midpoint of the two sizes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import deque
from typing import Any

import numpy as np

from kernel_shapes_model.data import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene, render

FOREGROUND_DISTANCE = 60.0
GRID = 3


@dataclasses.dataclass(frozen=True)
class Detection:
    colour: str | None
    shape: str | None
    position: str | None
    size: str | None
    background: str
    fill: float = 0.0
    area: int = 0

    def matches(self, scene: Scene) -> dict[str, bool]:
        """Per-attribute correctness against the scene that was asked for."""
        return {name: getattr(self, name) == getattr(scene, name)
                for name in ("colour", "shape", "position", "size", "background")}


def _as_array(image: Any) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be RGB [H, W, 3], got shape {arr.shape}")
    if arr.max() <= 1.0 + 1e-6 and arr.dtype != np.uint8 and not hasattr(image, "convert"):
        arr = arr * 255.0
    return arr


def _nearest(value: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    names = list(table)
    refs = np.asarray([table[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((refs - value) ** 2).sum(axis=1)))]


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        blob, queue = [], deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            blob.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(blob) > len(best):
            best = blob
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def shape_features(mask: np.ndarray) -> np.ndarray:
    """[fill ratio, 3x3 grid occupancy (row-major)] of a blob inside its bounding box."""
    ys, xs = np.nonzero(mask)
    box = mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].astype(np.float32)
    h, w = box.shape
    cells = []
    for i in range(GRID):
        for j in range(GRID):
            cell = box[i * h // GRID: max((i + 1) * h // GRID, i * h // GRID + 1),
                       j * w // GRID: max((j + 1) * w // GRID, j * w // GRID + 1)]
            cells.append(cell.mean())
    return np.asarray([box.mean(), *cells], dtype=np.float32)


@functools.lru_cache(maxsize=None)
def _prototypes(resolution: int) -> tuple[tuple[str, ...], np.ndarray]:
    """Mean features of each shape as the renderer draws it (both sizes, all backgrounds)."""
    names, feats = [], []
    for shape in SHAPES:
        rows = []
        for size in SIZES:
            for background in BACKGROUNDS:
                image = render(Scene(shape, "red", "center", size, background), resolution)
                arr = _as_array(image)
                rows.append(shape_features(_foreground(arr, np.asarray(BACKGROUNDS[background], np.float32))))
        names.append(shape)
        feats.append(np.mean(rows, axis=0))
    return tuple(names), np.stack(feats)


def _foreground(arr: np.ndarray, bg: np.ndarray) -> np.ndarray:
    dist = np.sqrt(((arr - bg) ** 2).sum(axis=2))
    return _largest_blob(dist > FOREGROUND_DISTANCE)


def detect(image: Any) -> Detection:
    """Measure one picture (PIL image, or an RGB array in [0, 255] or [0, 1])."""
    arr = _as_array(image)
    h, w, _ = arr.shape
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    bg = np.median(border, axis=0)
    background = _nearest(bg, BACKGROUNDS)
    mask = _foreground(arr, bg)
    area = int(mask.sum())
    if area < max(4, (h * w) // 400):
        return Detection(None, None, None, None, background, 0.0, area)

    pixels = arr[mask]
    dist = np.sqrt(((pixels - bg) ** 2).sum(axis=1))
    core = pixels[dist >= np.median(dist)]
    colour = _nearest(np.median(core, axis=0), COLOURS)

    feats = shape_features(mask)
    names, protos = _prototypes(h if h == w else 64)
    shape = names[int(np.argmin(((protos - feats) ** 2).sum(axis=1)))]

    ys, xs = np.nonzero(mask)
    centroid = np.asarray([xs.mean() / w, ys.mean() / h])
    anchors = np.asarray(list(POSITIONS.values()))
    position = list(POSITIONS)[int(np.argmin(((anchors - centroid) ** 2).sum(axis=1)))]

    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / max(h, w)
    small, large = SIZES["small"], SIZES["large"]
    size = "small" if extent < (small + large) / 2 else "large"
    return Detection(colour, shape, position, size, background, float(feats[0]), area)
