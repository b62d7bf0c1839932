"""GIF export and loading against Diffusers 0.42.1 (its GIF path is Pillow, as ours): a GIF written by either
library reads back the same in both, frames, frame rate and loop; MP4 parity needs imageio, which is not installed."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from diffusers.utils import export_to_gif as d_export_to_gif
from diffusers.utils import load_video as d_load_video
from kernel_video import export_to_gif, load_video


def _frames(n=4, size=(24, 16), seed=0):
    rng = np.random.default_rng(seed)
    # few colours, so the GIF palette holds them exactly
    palette = rng.integers(0, 256, (6, 3), dtype=np.uint8)
    return [PIL.Image.fromarray(palette[rng.integers(0, 6, (size[1], size[0]))]) for _ in range(n)]


def _rgb(frames):
    return np.stack([np.asarray(f.convert("RGB"), dtype=np.int16) for f in frames])


@pytest.mark.parametrize("fps", [8, 10, 3])
def test_gifs_both_ways(tmp_path, fps):
    frames = _frames()
    ours = export_to_gif(frames, str(tmp_path / "ours.gif"), fps=fps)
    theirs = d_export_to_gif(frames, str(tmp_path / "theirs.gif"), fps=fps)
    for path in (ours, theirs):
        got, got_fps = load_video(path, return_fps=True)
        want, want_fps = d_load_video(path, return_fps=True)
        assert len(got) == len(want) == len(frames)
        assert all(f.mode == "RGB" for f in got)
        assert np.array_equal(_rgb(got), _rgb(want))
        assert np.array_equal(_rgb(got), _rgb(frames))  # a 6-colour palette survives exactly
        assert got_fps == pytest.approx(want_fps)
    with PIL.Image.open(ours) as a, PIL.Image.open(theirs) as b:
        assert a.info.get("duration") == b.info.get("duration")  # GIFs store centiseconds: 125 ms is 120
        assert abs(a.info["duration"] - 1000 / fps) < 10
        assert a.info.get("loop") == b.info.get("loop") == 0


def test_convert_method_is_applied_as_in_diffusers(tmp_path):
    path = export_to_gif(_frames(), str(tmp_path / "a.gif"), fps=8)

    def grey(images):
        return [im.convert("L") for im in images]

    got, want = load_video(path, convert_method=grey), d_load_video(path, convert_method=grey)
    assert [f.mode for f in got] == [f.mode for f in want] == ["L"] * 4
    assert np.array_equal(np.stack([np.asarray(f) for f in got]), np.stack([np.asarray(f) for f in want]))
