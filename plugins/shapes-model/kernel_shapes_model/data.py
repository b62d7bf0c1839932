"""The shapes dataset: coloured geometric shapes on plain backgrounds, with captions.

Every picture is a function of ``(seed, index)`` only, so the dataset is the same on every
machine and needs no download.  A picture shows one shape (circle, square, triangle, star,
cross) of one named colour and size at one of five positions on a named background colour,
captioned in plain English::

    "a small red circle at the top left on a white background"

About a quarter of the training captions leave the size out ("a red circle at ..."), so a
prompt without a size works too.

Held-out split: a fixed set of :data:`HELD_OUT_COUNT` (colour, shape, position, background)
combinations never appears in training, in either size; the evaluation script generates
those captions to measure compositional generalisation (see ``benchmarks/eval_shapes.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import Iterator

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")

#: Foreground colours (sRGB), chosen to be far apart from each other and from the backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (245, 225, 30),
    "orange": (245, 140, 20),
    "purple": (135, 45, 185),
    "pink": (250, 125, 195),
    "cyan": (30, 215, 225),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}

#: Shape centre as a fraction of the picture side (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "center": (0.5, 0.5),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
}

#: Shape extent (side of its bounding box) as a fraction of the picture side.
SIZES: dict[str, float] = {"small": 0.27, "large": 0.42}

HELD_OUT_COUNT = 100
HELD_OUT_SEED = 1234
SIZE_DROP_PROB = 0.25
#: Random jitter of each picture, as fractions of the picture side / of the shape size.
POSITION_JITTER = 0.04
SIZE_JITTER = 0.08
SUPERSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class Scene:
    """One picture's content.  ``size`` is always set; ``caption`` may leave it out."""

    shape: str
    colour: str
    position: str
    size: str
    background: str

    @property
    def combo(self) -> tuple[str, str, str, str]:
        """The (colour, shape, position, background) combination the held-out split is made of."""
        return (self.colour, self.shape, self.position, self.background)

    def caption(self, with_size: bool = True) -> str:
        size = f"{self.size} " if with_size else ""
        return f"a {size}{self.colour} {self.shape} at the {self.position} on a {self.background} background"


def all_combos() -> list[tuple[str, str, str, str]]:
    return list(itertools.product(COLOURS, SHAPES, POSITIONS, BACKGROUNDS))


def held_out_combos() -> list[tuple[str, str, str, str]]:
    """The fixed held-out (colour, shape, position, background) combinations."""
    rng = random.Random(HELD_OUT_SEED)
    return sorted(rng.sample(all_combos(), HELD_OUT_COUNT))


def train_combos() -> list[tuple[str, str, str, str]]:
    held = set(held_out_combos())
    return [c for c in all_combos() if c not in held]


def held_out_scenes(count: int = HELD_OUT_COUNT, seed: int = 0) -> list[Scene]:
    """``count`` evaluation scenes, one per held-out combination (sizes drawn with ``seed``)."""
    combos = held_out_combos()
    if not 0 < count <= len(combos):
        raise ValueError(f"count must be in 1..{len(combos)}, got {count}")
    rng = random.Random(seed)
    picked = combos if count == len(combos) else sorted(rng.sample(combos, count))
    return [Scene(shape=s, colour=c, position=p, size=rng.choice(list(SIZES)), background=b)
            for (c, s, p, b) in picked]


def vocabulary() -> list[str]:
    """Every word a caption can contain."""
    words = {"a", "at", "the", "on", "background"}
    for name in [*SHAPES, *COLOURS, *BACKGROUNDS, *POSITIONS, *SIZES]:
        words.update(name.split())
    return sorted(words)


# ---------------------------------------------------------------------------- drawing
def shape_polygon(shape: str, cx: float, cy: float, extent: float) -> list[tuple[float, float]] | None:
    """Outline of ``shape`` centred at (cx, cy) inside an ``extent`` x ``extent`` box; None for a circle."""
    h = extent / 2
    if shape == "circle":
        return None
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # pointing up, base on the bottom edge of the box
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "star":  # five points, inner radius 0.45 of the outer; top point up
        points = []
        outer = h
        inner = 0.45 * h
        # centre the star's vertical extent (top point to lowest points) in the box
        dy = (outer - outer * math.cos(math.pi / 5)) / 2
        for k in range(10):
            r = outer if k % 2 == 0 else inner
            a = -math.pi / 2 + k * math.pi / 5
            points.append((cx + r * math.cos(a), cy + dy + r * math.sin(a)))
        return points
    if shape == "cross":  # plus sign, arms one third of the box wide
        t = extent / 6
        return [(cx - t, cy - h), (cx + t, cy - h), (cx + t, cy - t), (cx + h, cy - t), (cx + h, cy + t),
                (cx + t, cy + t), (cx + t, cy + h), (cx - t, cy + h), (cx - t, cy + t), (cx - h, cy + t),
                (cx - h, cy - t), (cx - t, cy - t)]
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def render(scene: Scene, resolution: int = 64, jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Image.Image:
    """Draw ``scene`` as an RGB picture; ``jitter`` = (dx, dy, relative size change)."""
    if scene.shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {scene.shape!r}")
    for value, table, name in ((scene.colour, COLOURS, "colour"), (scene.background, BACKGROUNDS, "background"),
                               (scene.position, POSITIONS, "position"), (scene.size, SIZES, "size")):
        if value not in table:
            raise ValueError(f"{name} must be one of {list(table)}, got {value!r}")
    big = resolution * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    fx, fy = POSITIONS[scene.position]
    cx, cy = (fx + jitter[0]) * big, (fy + jitter[1]) * big
    extent = SIZES[scene.size] * (1 + jitter[2]) * big
    polygon = shape_polygon(scene.shape, cx, cy, extent)
    fill = COLOURS[scene.colour]
    if polygon is None:
        h = extent / 2
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:
        draw.polygon(polygon, fill=fill)
    return image.resize((resolution, resolution), Image.Resampling.BOX)


# ---------------------------------------------------------------------------- dataset
class ShapesDataset:
    """Deterministic, indexable shapes dataset: item ``i`` depends only on ``(seed, i)``.

    ``split="train"`` draws from the training combinations, ``split="held_out"`` from the held-out
    ones.  Items are dicts ``{"image": PIL.Image, "text": caption, "scene": Scene}``.
    """

    def __init__(self, split: str = "train", length: int = 50_000, resolution: int = 64, seed: int = 0,
                 jitter: bool = True, size_drop_prob: float = SIZE_DROP_PROB):
        if split not in ("train", "held_out"):
            raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if resolution < 16 or resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8 and >= 16, got {resolution}")
        self.split, self.length, self.resolution, self.seed = split, length, resolution, seed
        self.jitter, self.size_drop_prob = jitter, size_drop_prob
        self.combos = train_combos() if split == "train" else held_out_combos()

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> tuple[Scene, bool, tuple[float, float, float]]:
        rng = random.Random(f"{self.seed}:{self.split}:{index}")
        colour, shape, position, background = self.combos[rng.randrange(len(self.combos))]
        scene = Scene(shape=shape, colour=colour, position=position, size=rng.choice(list(SIZES)),
                      background=background)
        with_size = rng.random() >= self.size_drop_prob
        jit = (0.0, 0.0, 0.0)
        if self.jitter:
            jit = (rng.uniform(-POSITION_JITTER, POSITION_JITTER), rng.uniform(-POSITION_JITTER, POSITION_JITTER),
                   rng.uniform(-SIZE_JITTER, SIZE_JITTER))
        return scene, with_size, jit

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        scene, with_size, jit = self.scene(index)
        return {"image": render(scene, self.resolution, jit), "text": scene.caption(with_size), "scene": scene}

    def __iter__(self) -> Iterator[dict]:
        for i in range(self.length):
            yield self[i]
