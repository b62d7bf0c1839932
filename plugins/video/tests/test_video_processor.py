"""VideoProcessor against Diffusers' VideoProcessor: same tensors for every input layout and output type."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.video_processor import VideoProcessor as DiffusersVideoProcessor

from kernel_video import VideoProcessor


def _pil_video(n=3, h=24, w=40, seed=0):
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


def _np_video(n=3, h=24, w=40, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, h, w, 3)).astype(np.float32)


INPUTS = {
    "pil-frames": lambda: _pil_video(),
    "pil-batch": lambda: [_pil_video(seed=1), _pil_video(seed=2)],
    "np-4d": lambda: _np_video(),
    "np-5d": lambda: np.stack([_np_video(seed=1), _np_video(seed=2)]),
    "np-frame-list": lambda: list(_np_video()),
    "np-4d-list": lambda: [_np_video(seed=1), _np_video(seed=2)],
    "pt-4d": lambda: torch.from_numpy(_np_video()).permute(0, 3, 1, 2),
    "pt-5d": lambda: torch.from_numpy(np.stack([_np_video(seed=1), _np_video(seed=2)])).permute(0, 1, 4, 2, 3),
    "pt-4d-list": lambda: [torch.from_numpy(_np_video(seed=s)).permute(0, 3, 1, 2) for s in (1, 2)],
}


@pytest.mark.parametrize("name", sorted(INPUTS))
@pytest.mark.parametrize("config", [dict(), dict(do_resize=False), dict(do_normalize=False, do_convert_rgb=True)])
def test_preprocess_video_matches_diffusers(name, config):
    ours, theirs = VideoProcessor(vae_scale_factor=8, **config), DiffusersVideoProcessor(vae_scale_factor=8, **config)
    a = ours.preprocess_video(INPUTS[name]())
    b = theirs.preprocess_video(INPUTS[name]())
    assert a.ndim == 5 and a.shape[1] == 3  # (B, C, F, H, W)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_control_style_processor_converts_frames_to_rgb_as_diffusers(mode):
    """The ControlNet pipelines' processor (no normalisation, RGB conversion) on grey / RGBA frames."""
    frames = [f.convert(mode) for f in _pil_video()]
    config = dict(vae_scale_factor=8, do_normalize=False, do_convert_rgb=True)
    a = VideoProcessor(**config).preprocess_video(frames, height=16, width=32)
    b = DiffusersVideoProcessor(**config).preprocess_video(frames, height=16, width=32)
    assert tuple(a.shape) == (1, 3, 3, 16, 32) and float(a.min()) >= 0.0
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_preprocess_video_resizes_to_the_given_size():
    ours, theirs = VideoProcessor(vae_scale_factor=8), DiffusersVideoProcessor(vae_scale_factor=8)
    a = ours.preprocess_video(_pil_video(2, 30, 50), height=16, width=32)
    b = theirs.preprocess_video(_pil_video(2, 30, 50), height=16, width=32)
    assert tuple(a.shape) == (1, 3, 2, 16, 32)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("output_type", ["np", "pt", "pil"])
def test_postprocess_video_matches_diffusers(output_type):
    video = torch.randn(2, 3, 4, 16, 24, generator=torch.Generator().manual_seed(0)).clamp(-1.2, 1.2)
    a = VideoProcessor().postprocess_video(video, output_type=output_type)
    b = DiffusersVideoProcessor().postprocess_video(video, output_type=output_type)
    if output_type == "pil":
        assert len(a) == 2 and len(a[0]) == 4 and a[0][0].size == (24, 16)
        for va, vb in zip(a, b):
            for fa, fb in zip(va, vb):
                assert np.array_equal(np.asarray(fa), np.asarray(fb))
        return
    expected = (2, 4, 16, 24, 3) if output_type == "np" else (2, 4, 3, 16, 24)
    assert tuple(a.shape) == expected
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)


def test_static_helpers_match_diffusers():
    ratios = {"0.5": (512, 1024), "1.0": (768, 768), "2.0": (1024, 512)}
    for h, w in [(100, 210), (400, 390), (900, 420)]:
        assert VideoProcessor.classify_height_width_bin(h, w, ratios) == \
            DiffusersVideoProcessor.classify_height_width_bin(h, w, ratios)
    x = torch.randn(1, 3, 2, 20, 30)
    torch.testing.assert_close(VideoProcessor.resize_and_crop_tensor(x, 16, 24),
                               DiffusersVideoProcessor.resize_and_crop_tensor(x, 16, 24))
    assert VideoProcessor.resize_and_crop_tensor(x, 30, 20) is x


def test_config_round_trip_with_diffusers(tmp_path):
    VideoProcessor(do_resize=False, vae_scale_factor=4).save_config(tmp_path)
    loaded = DiffusersVideoProcessor.from_config(DiffusersVideoProcessor.load_config(tmp_path))
    assert loaded.config.do_resize is False and loaded.config.vae_scale_factor == 4
    DiffusersVideoProcessor(do_resize=False, vae_scale_factor=4).save_config(tmp_path / "d")
    ours = VideoProcessor.from_pretrained(tmp_path / "d")
    assert ours.config.do_resize is False and ours.config.vae_scale_factor == 4


def test_bad_input():
    vp = VideoProcessor()
    with pytest.raises(ValueError, match="video must be"):
        vp.preprocess_video("clip.mp4")
    with pytest.raises(ValueError, match="video must be"):
        vp.preprocess_video([])
    with pytest.raises(ValueError, match="same number and size of frames"):
        vp.preprocess_video([_pil_video(2), _pil_video(3)])
    with pytest.raises(ValueError, match="output_type='latent' is not supported for videos"):
        vp.postprocess_video(torch.zeros(1, 3, 2, 8, 8), output_type="latent")
    with pytest.raises(ValueError, match=r"\(batch, channels, frames, height, width\)"):
        vp.postprocess_video(torch.zeros(3, 2, 8, 8))
