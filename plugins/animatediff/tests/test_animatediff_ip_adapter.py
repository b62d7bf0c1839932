"""IP-Adapter on AnimateDiffPipeline against Diffusers (1e-3): ``load_ip_adapter`` + ``ip_adapter_image`` /
``ip_adapter_image_embeds`` on a UNet with motion modules, whose attention layers the IP-Adapter files do not
number (Diffusers skips them); a tiny random IP-Adapter in the original layout, written here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ip-adapter" / "tests"))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")
import ip_fixtures as ipf  # noqa: E402

from kernel_ip_adapter import ip_processors  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
ATOL = 1e-3
CALL = dict(prompt="a cat", num_frames=fx.FRAMES, height=fx.SIZE, width=fx.SIZE, num_inference_steps=2,
            output_type="np")


def _pipelines(kinds=("ip",), load: bool = True, name: str = "AnimateDiffPipeline"):
    """(Diffusers', ours) AnimateDiff pipelines with equal weights, a tiny CLIP image encoder and, with ``load``,
    the same random IP-Adapter(s) (numbered over the SD UNet's attention layers, as the original files are)."""
    theirs, ours = fx.components()
    encoder, extractor = ipf.image_encoder()
    states = [ipf.random_ip_adapter(theirs["unet"], kind, seed=i) for i, kind in enumerate(kinds)]
    for parts in (theirs, ours):
        parts.update(image_encoder=encoder, feature_extractor=extractor)
    d, o = getattr(diffusers, name)(**theirs), __import__("kernel").component(name)(**ours)
    for p in (d, o):
        p.set_progress_bar_config(disable=True)
        if load:
            p.load_ip_adapter(states if len(states) > 1 else states[0], subfolder=None,
                              weight_name=[None] * len(states), image_encoder_folder=None)
    return d, o


def _run(pipe, seed=0, **kw):
    return pipe(**{**CALL, **kw}, generator=fx.gen(seed)).frames


@pytest.fixture(scope="module")
def loaded():
    return _pipelines()


def test_image_prompt_matches_diffusers(loaded):
    d, o = loaded
    image = ipf.ip_image()
    ours, theirs = _run(o, ip_adapter_image=image), _run(d, ip_adapter_image=image)
    assert ours.shape == theirs.shape == (1, fx.FRAMES, fx.SIZE, fx.SIZE, 3)
    assert fx.max_diff(ours, theirs) < ATOL
    # the image prompt changes the video, and the motion modules kept their own processors
    o.unload_ip_adapter()
    try:
        assert fx.max_diff(ours, _run(o)) > 1e-2
    finally:
        o.load_ip_adapter(ipf.random_ip_adapter(fx.components()[0]["unet"], "ip", seed=0), subfolder=None,
                          weight_name=None, image_encoder_folder=None)
    assert ip_processors(o.unet) and not any("motion_modules" in name for name in ip_processors(o.unet))
    assert len(ip_processors(o.unet)) == sum(1 for k, p in d.unet.attn_processors.items() if hasattr(p, "to_k_ip"))


@pytest.mark.parametrize("kw", [
    {"negative_prompt": "dark", "ip_scale": 0.5},
    {"prompt": ["a cat", "a dog"], "num_videos_per_prompt": 1},
    {"guidance_scale": 1.0},
], ids=["negative-scale", "batch", "no-cfg"])
def test_options_match_diffusers(loaded, kw):
    d, o = loaded
    kw = dict(kw)
    scale = kw.pop("ip_scale", 1.0)
    for p in (d, o):
        p.set_ip_adapter_scale(scale)
    try:
        image = ipf.ip_image(1)
        assert fx.max_diff(_run(o, ip_adapter_image=image, **kw), _run(d, ip_adapter_image=image, **kw)) < ATOL
    finally:
        for p in (d, o):
            p.set_ip_adapter_scale(1.0)


def test_precomputed_embeds_match_diffusers(loaded):
    d, o = loaded
    image = ipf.ip_image(2)
    embeds = o.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, True)
    theirs = d.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, True)
    torch.testing.assert_close(embeds[0], theirs[0], atol=1e-6, rtol=0)
    ours = _run(o, ip_adapter_image_embeds=embeds)
    assert fx.max_diff(ours, _run(d, ip_adapter_image_embeds=theirs)) < ATOL
    assert fx.max_diff(ours, _run(o, ip_adapter_image=image)) < 1e-6


def test_plus_adapter_matches_diffusers():
    d, o = _pipelines(("plus",))
    image = ipf.ip_image(3)
    assert fx.max_diff(_run(o, ip_adapter_image=image), _run(d, ip_adapter_image=image)) < ATOL


def test_video_to_video_matches_diffusers():
    d, o = _pipelines(name="AnimateDiffVideoToVideoPipeline")
    call = dict(video=fx.video(), prompt="a cat", height=fx.SIZE, width=fx.SIZE, num_inference_steps=4, strength=0.6,
                output_type="np", ip_adapter_image=ipf.ip_image(4))
    ours = o(**call, generator=fx.gen(0)).frames
    assert fx.max_diff(ours, d(**call, generator=fx.gen(0)).frames) < ATOL
    assert fx.max_diff(ours, o(**{**call, "ip_adapter_image": ipf.ip_image(9)}, generator=fx.gen(0)).frames) > 1e-3


def test_sdxl_matches_diffusers():
    import test_animatediff_sdxl as xl

    theirs, ours = xl.components()
    encoder, extractor = ipf.image_encoder()
    state = ipf.random_ip_adapter(theirs["unet"], "ip", seed=5)
    pipes = []
    for parts, make in ((theirs, diffusers.AnimateDiffSDXLPipeline),
                        (ours, __import__("kernel").component("AnimateDiffSDXLPipeline"))):
        pipe = make(**parts, image_encoder=encoder, feature_extractor=extractor)
        if parts is theirs:  # Diffusers 0.42.1 leaves the motion UNet's text_time embedding random (see that test)
            xl.fix_oracle(pipe.unet, parts["unet"])
        pipe.set_progress_bar_config(disable=True)
        pipe.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None)
        pipes.append(pipe)
    d, o = pipes
    call = dict(xl.BASE, ip_adapter_image=ipf.ip_image(6))
    assert fx.max_diff(o(**call, generator=fx.gen(0)).frames, d(**call, generator=fx.gen(0)).frames) < ATOL


def test_unload_gives_the_plain_pipeline_back():
    d, o = _pipelines()
    image = ipf.ip_image()
    with_ip = _run(o, ip_adapter_image=image)
    o.unload_ip_adapter()
    _, plain = _pipelines(load=False)
    np.testing.assert_allclose(_run(o), _run(plain), atol=1e-6, rtol=0)
    assert not o.unet._forward_pre_hooks
    assert fx.max_diff(with_ip, _run(o)) > 1e-2


def test_errors(loaded):
    _, o = loaded
    with pytest.raises(ValueError, match="pass ip_adapter_image or ip_adapter_image_embeds"):
        _run(o)
    with pytest.raises(ValueError, match="image_embeds"):
        o.unet(torch.zeros(1, 4, 2, 8, 8), 10, torch.zeros(1, 77, 32))
    # an SD 1.5 file numbered over the motion UNet's attention layers (motion modules included) does not fit
    _, plain = _pipelines(load=False)
    state = ipf.random_ip_adapter(diffusers.UNet2DConditionModel(**fx.UNET), "ip")
    state["ip_adapter"] = {f"{int(k.split('.')[0]) + 4}.{k.split('.', 1)[1]}": v for k, v in state["ip_adapter"].items()}
    with pytest.raises(ValueError, match="cross-attention layers"):
        plain.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None)
