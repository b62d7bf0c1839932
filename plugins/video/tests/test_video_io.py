"""export_to_video / export_to_gif / load_video: round trips, atomic writes and bad input."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from kernel_video import export_to_gif, export_to_video, load_video


def _frames(n=5, h=32, w=48, seed=0):
    """Smooth frames with a moving bright square, so lossy coding keeps them recognisable."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.4, size=(1, 1, 3)).astype(np.float32)
    out = []
    for i in range(n):
        f = np.broadcast_to(base, (h, w, 3)).copy()
        f[4:12, 4 + 4 * i:12 + 4 * i] = 0.9
        out.append(f)
    return out


def _arr(pil):
    return np.asarray(pil, dtype=np.float32) / 255


@pytest.mark.parametrize("kind", ["float-list", "uint8-list", "pil", "np4d", "pt4d"])
def test_mp4_round_trip_keeps_frame_count_size_and_content(tmp_path, kind):
    frames = _frames()
    given = {
        "float-list": frames,
        "uint8-list": [(f * 255).round().astype(np.uint8) for f in frames],
        "pil": [PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in frames],
        "np4d": np.stack(frames),
        "pt4d": torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2),
    }[kind]
    path = export_to_video(given, tmp_path / "clip.mp4", fps=8)
    assert path == str(tmp_path / "clip.mp4")
    back, fps = load_video(path, return_fps=True)
    assert len(back) == len(frames)
    assert back[0].size == (48, 32) and back[0].mode == "RGB"
    assert fps == pytest.approx(8)
    # lossy H.264: close on average, and the moving square is where it was
    for got, want in zip(back, frames):
        assert np.abs(_arr(got) - want).mean() < 0.03
    assert _arr(back[3])[8, 8 + 12].mean() > 0.7 and _arr(back[0])[8, 8 + 12].mean() < 0.5
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file was left behind"


def test_mkv_and_mov_and_fractional_fps(tmp_path):
    for ext in ("mkv", "mov"):
        back, fps = load_video(export_to_video(_frames(3), tmp_path / f"a.{ext}", fps=7.5), return_fps=True)
        assert len(back) == 3 and fps == pytest.approx(7.5)


def test_odd_sizes_are_scaled_to_the_macro_block_or_kept(tmp_path):
    frames = _frames(2, h=30, w=45)
    assert load_video(export_to_video(frames, tmp_path / "a.mp4"))[0].size == (48, 32)
    assert load_video(export_to_video(frames, tmp_path / "b.mp4", macro_block_size=None))[0].size == (45, 30)


def test_default_path_is_a_temporary_mp4():
    path = export_to_video(_frames(2))
    assert path.endswith(".mp4") and len(load_video(path)) == 2


def test_gif_round_trip_frames_and_fps(tmp_path):
    frames = _frames(4)
    path = export_to_gif([PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in frames],
                         tmp_path / "anim.gif", fps=5)
    back, fps = load_video(path, return_fps=True)
    assert len(back) == 4 and back[0].size == (48, 32) and fps == pytest.approx(5)
    with PIL.Image.open(path) as gif:
        assert gif.info["duration"] == 200 and gif.info.get("loop") == 0
    for got, want in zip(back, frames):  # palette quantisation only
        assert np.abs(_arr(got) - want).max() < 0.05
    assert export_to_gif(frames).endswith(".gif")


def test_convert_method_is_applied(tmp_path):
    path = export_to_gif(_frames(3), tmp_path / "a.gif")
    out = load_video(path, convert_method=lambda fs: [f.convert("L") for f in fs[:2]])
    assert len(out) == 2 and out[0].mode == "L"


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.mp4"
    export_to_video(_frames(2), target)
    before = target.read_bytes()
    import av

    def boom(*a, **k):
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", boom)
    with pytest.raises(RuntimeError):
        export_to_video(_frames(3), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]


@pytest.mark.parametrize("call, match", [
    (lambda p: export_to_video(_frames(2), p / "a.avi"), "extension '.avi'"),
    (lambda p: export_to_video(_frames(2), p / "a.gif"), "export_to_gif"),
    (lambda p: export_to_gif(_frames(2), p / "a.mp4"), "extension '.mp4'"),
    (lambda p: export_to_video([], p / "a.mp4"), "at least one frame"),
    (lambda p: export_to_video(_frames(2), p / "a.mp4", fps=0), "fps must be a positive number"),
    (lambda p: export_to_gif(_frames(2), p / "a.gif", fps=-1), "fps must be a positive number"),
    (lambda p: export_to_video(_frames(2), p / "a.mp4", quality=11), "quality must be"),
    (lambda p: export_to_video(_frames(2), p / "a.mp4", bitrate=0), "bitrate must be"),
    (lambda p: export_to_video(_frames(2), p / "a.mp4", macro_block_size=0), "macro_block_size must be"),
    (lambda p: export_to_video([_frames(1)[0], _frames(1, h=16)[0]], p / "a.mp4"), "same size"),
    (lambda p: export_to_video([np.zeros((8, 8, 2))], p / "a.mp4"), "frame array must be"),
    (lambda p: export_to_video([np.zeros((8, 8, 3), dtype=np.int32)], p / "a.mp4"), "use uint8"),
    (lambda p: export_to_video(np.zeros((8, 8, 3)), p / "a.mp4"), "F x H x W x C"),
    (lambda p: export_to_video(_frames(2), (p / "d.mp4").mkdir() or p / "d.mp4"), "is a folder"),
    (lambda p: load_video("https://example.com/a.mp4"), "URL"),
    (lambda p: load_video(str(p / "missing.mp4")), "is not a file"),
])
def test_bad_input_raises_value_error(tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(tmp_path)


def test_bad_types_raise_type_error(tmp_path):
    with pytest.raises(TypeError, match="frames must be"):
        export_to_video("not frames", tmp_path / "a.mp4")
    with pytest.raises(TypeError, match=r"frames\[0\] is a int"):
        export_to_video([3], tmp_path / "a.mp4")
    with pytest.raises(TypeError, match="output_video_path must be a path"):
        export_to_video(_frames(1), 5)
    with pytest.raises(TypeError, match="video must be a path"):
        load_video(123)
    with pytest.raises(TypeError, match="convert_method"):
        load_video(export_to_gif(_frames(1), tmp_path / "a.gif"), convert_method=3)


def test_unreadable_files_raise_value_error(tmp_path):
    (tmp_path / "a.txt").write_text("hi")
    with pytest.raises(ValueError, match="extension '.txt'"):
        load_video(tmp_path / "a.txt")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="could not be decoded"):
        load_video(tmp_path / "broken.mp4")
    (tmp_path / "broken.gif").write_bytes(b"GIF89a\x00")
    with pytest.raises(ValueError, match="not a readable GIF"):
        load_video(tmp_path / "broken.gif")
