"""kernel_autoencoders.image_processor.VaeImageProcessor against Diffusers' VaeImageProcessor."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from kernel_autoencoders.image_processor import MASK_PROCESSOR_CONFIG, VaeImageProcessor

diffusers_ip = pytest.importorskip("diffusers.image_processor")
DVae = diffusers_ip.VaeImageProcessor


def _pil(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return PIL.Image.fromarray(arr).convert(mode)


def _both(**cfg):
    return VaeImageProcessor(**cfg), DVae(**cfg)


def _same(a, b):
    if isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, PIL.Image.Image):
        assert a.size == b.size and a.mode == b.mode
        assert np.array_equal(np.asarray(a), np.asarray(b))
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    else:
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


CONFIGS = [
    {},
    {"vae_scale_factor": 16, "resample": "bicubic"},
    {"do_resize": False},
    {"do_convert_rgb": True},
    MASK_PROCESSOR_CONFIG,
    {"do_normalize": False},
]


def _inputs():
    rng = np.random.default_rng(3)
    return {
        "pil": _pil(37, 29),
        "pil_list": [_pil(37, 29, 1), _pil(40, 20, 2)],
        "pil_rgba": _pil(33, 41, mode="RGBA"),
        "pil_gray": _pil(24, 24, mode="L"),
        "np3": rng.random((29, 35, 3), dtype=np.float32),
        "np4": rng.random((2, 29, 35, 3), dtype=np.float32),
        "np_list": [rng.random((16, 24, 3), dtype=np.float32) for _ in range(2)],
        "np_gray": rng.random((2, 20, 20), dtype=np.float32),
        "pt3": torch.rand(3, 27, 33, generator=torch.Generator().manual_seed(0)),
        "pt4": torch.rand(2, 3, 27, 33, generator=torch.Generator().manual_seed(1)),
        "pt_list": [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2)) for _ in range(3)],
        "pt_latent": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)),
        "pt_gray": torch.rand(2, 24, 24, generator=torch.Generator().manual_seed(4)),
    }


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("name", list(_inputs()))
def test_preprocess_matches(cfg, name):
    ours, ref = _both(**cfg)
    x = _inputs()[name]
    try:
        expected = ref.preprocess(x)
    except Exception as err:  # noqa: BLE001 - both must refuse the same inputs
        with pytest.raises(type(err)):
            ours.preprocess(x)
        return
    _same(ours.preprocess(x), expected)


@pytest.mark.parametrize("mode", ["default", "fill", "crop"])
@pytest.mark.parametrize("size", [(32, 48), (48, 32), (40, 40)])
def test_preprocess_resize_modes(mode, size):
    ours, ref = _both()
    h, w = size
    for img in (_pil(37, 29), _pil(20, 50), _pil(64, 64)):
        _same(ours.preprocess(img, height=h, width=w, resize_mode=mode), ref.preprocess(img, height=h, width=w, resize_mode=mode))


def test_preprocess_crops_coords():
    ours, ref = _both()
    img = _pil(64, 48)
    _same(ours.preprocess(img, 16, 24, crops_coords=(4, 2, 40, 30)), ref.preprocess(img, 16, 24, crops_coords=(4, 2, 40, 30)))


def test_negative_inputs_not_renormalised():
    ours, ref = _both()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with pytest.warns(FutureWarning):
        a = ours.preprocess(x)
    with pytest.warns(FutureWarning):
        b = ref.preprocess(x)
    _same(a, b)


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
@pytest.mark.parametrize("cfg", [{}, {"do_normalize": False}], ids=str)
def test_postprocess_matches(output_type, cfg):
    ours, ref = _both(**cfg)
    x = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    _same(ours.postprocess(x, output_type=output_type), ref.postprocess(x, output_type=output_type))
    flags = [True, False]
    _same(ours.postprocess(x, output_type=output_type, do_denormalize=flags),
          ref.postprocess(x, output_type=output_type, do_denormalize=flags))


def test_postprocess_single_channel():
    ours, ref = _both()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    _same(ours.postprocess(x), ref.postprocess(x))


def test_static_conversions():
    rng = np.random.default_rng(0)
    arr = rng.random((2, 8, 8, 3), dtype=np.float32)
    _same(VaeImageProcessor.numpy_to_pil(arr), DVae.numpy_to_pil(arr))
    imgs = [_pil(8, 8, 1), _pil(8, 8, 2)]
    _same(VaeImageProcessor.pil_to_numpy(imgs), DVae.pil_to_numpy(imgs))
    _same(VaeImageProcessor.numpy_to_pt(arr), DVae.numpy_to_pt(arr))
    t = torch.rand(2, 3, 4, 5)
    _same(VaeImageProcessor.pt_to_numpy(t), DVae.pt_to_numpy(t))
    _same(VaeImageProcessor.blur(_pil(16, 16), 3), DVae.blur(_pil(16, 16), 3))


@pytest.mark.parametrize("hw", [(None, None), (30, None), (None, 45), (33, 47)])
def test_default_height_width(hw):
    ours, ref = _both()
    for img in (_pil(37, 29), np.zeros((1, 29, 37, 3)), torch.zeros(1, 3, 29, 37)):
        assert ours.get_default_height_width(img, *hw) == ref.get_default_height_width(img, *hw)


def _mask(w, h, box):
    m = PIL.Image.new("L", (w, h), 0)
    m.paste(255, box)
    return m


@pytest.mark.parametrize("box", [(10, 10, 20, 14), (0, 0, 5, 60), (50, 2, 64, 4), (30, 30, 31, 31), (0, 0, 64, 64)])
@pytest.mark.parametrize("size", [(64, 64), (32, 64), (64, 24)])
@pytest.mark.parametrize("pad", [0, 4, 32])
def test_get_crop_region(box, size, pad):
    m = _mask(64, 64, box)
    assert VaeImageProcessor.get_crop_region(m, *size, pad=pad) == DVae.get_crop_region(m, *size, pad=pad)


@pytest.mark.parametrize("crop", [None, (8, 4, 40, 36)])
def test_apply_overlay(crop):
    ours, ref = _both()
    init, gen = _pil(48, 40, 1), _pil(32, 32, 2) if crop else _pil(48, 40, 2)
    mask = VaeImageProcessor.blur(_mask(48, 40, (10, 10, 30, 30)), 2)
    _same(ours.apply_overlay(mask, init, gen, crop), ref.apply_overlay(mask, init, gen, crop))


def test_config_round_trip(tmp_path):
    ours = VaeImageProcessor(vae_scale_factor=16, resample="bicubic")
    ours.save_config(tmp_path)
    ref = DVae.from_config(DVae.load_config(tmp_path))
    assert ref.config.vae_scale_factor == 16 and ref.config.resample == "bicubic"
    DVae(do_normalize=False).save_config(tmp_path / "d")
    back = VaeImageProcessor.from_pretrained(tmp_path / "d")
    assert back.config.do_normalize is False and back.config.vae_scale_factor == 8
    mask = VaeImageProcessor.for_masks(4)
    assert (mask.config.do_normalize, mask.config.do_binarize, mask.config.do_convert_grayscale) == (False, True, True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="do_convert_rgb"):
        VaeImageProcessor(do_convert_rgb=True, do_convert_grayscale=True)
    with pytest.raises(ValueError, match="resample"):
        VaeImageProcessor(resample="box-ish")
    ip = VaeImageProcessor()
    with pytest.raises(ValueError, match="image"):
        ip.preprocess("not an image")
    with pytest.raises(ValueError, match="resize_mode"):
        ip.preprocess(_pil(16, 16), resize_mode="stretch")
    with pytest.raises(ValueError, match="resize_mode"):
        ip.resize(torch.rand(1, 3, 16, 16), 8, 8, resize_mode="fill")
    with pytest.raises(ValueError, match="output_type"):
        ip.postprocess(torch.rand(1, 3, 8, 8), output_type="jpeg")
    with pytest.raises(TypeError, match="torch.Tensor"):
        ip.postprocess(np.zeros((1, 3, 8, 8)))
