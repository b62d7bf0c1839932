"""kernel_controlnet.canny: edges exactly along a square's border, thresholds and hysteresis, inputs."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from kernel_controlnet import canny

SIZE, LO, HI = 64, 16, 48  # a square covering [LO, HI) in both directions


def _square(value: int = 255, background: int = 0, rgb: bool = False) -> PIL.Image.Image:
    a = np.full((SIZE, SIZE), background, np.uint8)
    a[LO:HI, LO:HI] = value
    if rgb:
        a = np.stack([np.zeros_like(a), a, np.zeros_like(a)], axis=-1)  # the square only in green
    return PIL.Image.fromarray(a)


def _edges(image, *args, **kwargs) -> np.ndarray:
    out = canny(image, *args, **kwargs)
    assert isinstance(out, PIL.Image.Image) and out.mode == "L" and out.size == (SIZE, SIZE)
    a = np.asarray(out)
    assert set(np.unique(a)) <= {0, 255}
    return a > 0


def _distance_to_border(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Chebyshev distance of pixels to the square's outline (the boundary between LO-1|LO and HI-1|HI)."""
    def to_edge(v):
        return np.minimum(np.abs(v - (LO - 0.5)), np.abs(v - (HI - 0.5)))
    inside = lambda v: (v >= LO - 1) & (v <= HI)  # noqa: E731 - within one pixel of the square's span
    d_rows = np.where(inside(xs), to_edge(ys), np.inf)
    d_cols = np.where(inside(ys), to_edge(xs), np.inf)
    return np.minimum(d_rows, d_cols)


@pytest.mark.parametrize("rgb", [False, True], ids=["gray", "rgb"])
def test_square_gives_a_thin_closed_outline_and_nothing_else(rgb):
    edges = _edges(_square(rgb=rgb))
    ys, xs = np.nonzero(edges)
    assert len(ys) and _distance_to_border(ys, xs).max() <= 0.5  # on the boundary's two pixel rows only
    # every side is traced (corners may be cut) and the line is one pixel thin
    for side in (edges[LO - 1:LO + 1, LO + 2:HI - 2], edges[HI - 1:HI + 1, LO + 2:HI - 2],
                 edges[LO + 2:HI - 2, LO - 1:LO + 1].T, edges[LO + 2:HI - 2, HI - 1:HI + 1].T):
        assert side.any(axis=0).all(), "a side of the square has gaps"
        assert (side.sum(axis=0) == 1).all(), "the outline is thicker than one pixel"
    assert not edges[LO + 2:HI - 2, LO + 2:HI - 2].any() and not edges[:LO - 2].any()


def test_flat_image_has_no_edges():
    assert not _edges(PIL.Image.new("RGB", (SIZE, SIZE), (120, 30, 200))).any()


def test_thresholds_select_by_contrast():
    faint = _square(value=40)  # gradient far below the defaults
    assert not _edges(faint).any()
    assert _edges(faint, 10, 20).sum() > 100
    strong = _square()
    assert not _edges(strong, 5000, 6000).any()  # above any gradient of 8-bit images
    assert (_edges(strong, 100, 200) == _edges(strong, 150, 150)).all()  # one clean step: the same outline


def test_hysteresis_keeps_weak_edges_only_when_connected_to_strong_ones():
    """One horizontal edge whose contrast fades from 255 (left) to 60 (right): with the low threshold below
    the faint end and the high one above it, the whole edge is kept because it is connected to the strong
    end; the same faint step alone has no strong pixel and gives nothing."""
    fading = np.zeros((SIZE, SIZE), np.uint8)
    fading[SIZE // 2:] = np.linspace(255, 60, SIZE).round().astype(np.uint8)
    faint = np.where(fading > 0, 60, 0).astype(np.uint8)
    lo, hi = 50, 400
    assert not _edges(faint, lo, hi).any() and _edges(faint, lo, lo).any()
    joined = _edges(fading, lo, hi)
    assert joined.any(axis=0).all() and joined.sum() == SIZE  # traced across, one pixel per column
    assert set(np.nonzero(joined)[0]) <= {SIZE // 2 - 1, SIZE // 2}
    strong_only = _edges(fading, 300, hi)  # low threshold above the faint end: the edge stops early
    assert strong_only[:, : SIZE // 2].any(axis=0).all() and not strong_only[:, -8:].any()


def test_arrays_and_float_images_give_the_same_edges():
    image = _square()
    a = np.asarray(image)
    expected = _edges(image)
    assert (_edges(a) == expected).all()
    assert (_edges(a.astype(np.float32) / 255.0) == expected).all()
    assert (_edges(np.asarray(image.convert("RGB"))) == expected).all()


@pytest.mark.parametrize("kwargs,name", [
    (dict(low_threshold=-1), "low_threshold"),
    (dict(high_threshold=float("nan")), "high_threshold"),
    (dict(low_threshold=200, high_threshold=100), "low_threshold"),
    (dict(sigma=-0.5), "sigma"),
])
def test_bad_thresholds_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        canny(_square(), **kwargs)


def test_bad_images_are_refused():
    with pytest.raises(TypeError, match="image"):
        canny("square.png")
    with pytest.raises(ValueError, match="image"):
        canny(np.zeros((4, 4, 2), np.uint8))
