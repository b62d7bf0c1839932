"""MP4 files both ways with Diffusers 0.42.1 (its video I/O is imageio + imageio-ffmpeg, ours PyAV): a video written
by either library loads in both with the same frame count, size and frame rate, and the two decoders agree."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("imageio_ffmpeg", reason="Diffusers' MP4 I/O (the oracle) needs imageio-ffmpeg")

from diffusers.utils import export_to_video as d_export_to_video  # noqa: E402
from diffusers.utils import load_video as d_load_video  # noqa: E402
from kernel_video import export_to_video, load_video  # noqa: E402


def _frames(n=6, h=32, w=48):
    """Smooth float frames in [0, 1] with a moving bright square (lossy coding keeps them recognisable)."""
    out = []
    for i in range(n):
        f = np.full((h, w, 3), 0.3, dtype=np.float32)
        f[4:12, 4 + 4 * i:12 + 4 * i] = 0.9
        out.append(f)
    return out


def _arr(frames):
    return np.stack([np.asarray(f.convert("RGB"), dtype=np.float32) / 255 for f in frames])


@pytest.mark.parametrize("writer", ["ours", "diffusers"])
def test_mp4_both_ways(tmp_path, writer):
    frames = _frames()
    path = str(tmp_path / f"{writer}.mp4")
    (export_to_video if writer == "ours" else d_export_to_video)(frames, path, fps=8)
    got, got_fps = load_video(path, return_fps=True)
    want, want_fps = d_load_video(path, return_fps=True)
    assert len(got) == len(want) == len(frames)
    assert got[0].size == want[0].size == (48, 32)
    assert got_fps == pytest.approx(want_fps) == pytest.approx(8)
    diff = np.abs(_arr(got) - _arr(want))
    print(f"{writer}.mp4: our decoder vs Diffusers' max {diff.max():.3f}, mean {diff.mean():.4f}")
    assert diff.max() <= 2 / 255  # two FFmpeg front ends (measured: identical)
    assert np.abs(_arr(got) - np.stack(frames)).mean() < 0.03  # and both are the frames given
