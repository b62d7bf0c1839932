"""FreeNoise split inference: same frames as Diffusers and as our unsplit run, chunks really run, removable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from diffusers.pipelines.free_noise_utils import SplitInferenceModule

from kernel_animatediff.free_noise import SplitInference

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

BASE = dict(prompt="a cat walks", height=fx.SIZE, width=fx.SIZE, num_inference_steps=2, output_type="np",
            num_frames=10)
# CFG doubles the batch: 2 videos x 8 x 8 latent pixels = 128 motion sequences in the first stage (3 chunks of 48),
# 2 x 10 = 20 frames in every 2-D layer (3 chunks of 8)
SPATIAL, TEMPORAL = 48, 8


def _wrappers(model):
    return {name: m.__dict__["forward"] for name, m in model.named_modules()
            if isinstance(m.__dict__.get("forward"), SplitInference)}


@pytest.fixture(scope="module")
def t2v():
    return fx.pipelines()


def test_matches_diffusers_and_unsplit(t2v):
    theirs, ours = t2v
    keys = set(ours.unet.state_dict())
    for pipe in t2v:
        pipe.enable_free_noise(context_length=4, context_stride=2)
    try:
        unsplit = ours(**BASE, generator=fx.gen(0)).frames
        for pipe in t2v:
            pipe.enable_free_noise_split_inference(spatial_split_size=SPATIAL, temporal_split_size=TEMPORAL)
        got = ours(**BASE, generator=fx.gen(0)).frames
        want = theirs(**BASE, generator=fx.gen(0)).frames
        wrappers = _wrappers(ours.unet)
        assert set(ours.unet.state_dict()) == keys  # parameter names unchanged while splitting
    finally:
        for pipe in t2v:
            pipe.disable_free_noise()
    assert fx.max_diff(got, want) < 1e-3
    assert fx.max_diff(got, unsplit) < 1e-5
    # every module Diffusers splits, and the splits really happened
    motion = wrappers["down_blocks.0.motion_modules.0.transformer_blocks.0"]
    assert motion.split_size == SPATIAL and motion.chunks == 3 * motion.calls > 0
    for name in ("down_blocks.0.resnets.0", "down_blocks.0.attentions.0", "down_blocks.0.downsamplers.0",
                 "mid_block.resnets.1", "up_blocks.0.upsamplers.0", "up_blocks.1.motion_modules.0.proj_in"):
        assert wrappers[name].chunks > wrappers[name].calls > 0, name
    assert wrappers["down_blocks.1.motion_modules.0.proj_out"].chunks == wrappers[
        "down_blocks.1.motion_modules.0.proj_out"].calls  # 2 x 4 x 4 = 32 rows: one chunk
    # disable_free_noise removed every wrapper
    assert not _wrappers(ours.unet)


def test_video_to_video_matches_diffusers():
    pair = fx.pipelines("AnimateDiffVideoToVideoPipeline")
    theirs, ours = pair
    args = dict(video=fx.video(frames=10), prompt={0: "a cat", 5: "a dog"}, height=fx.SIZE, width=fx.SIZE,
                num_inference_steps=4, strength=0.6, output_type="np")
    for pipe in pair:
        pipe.enable_free_noise(context_length=4, context_stride=2)
        pipe.enable_free_noise_split_inference(spatial_split_size=SPATIAL, temporal_split_size=TEMPORAL)
    try:
        got = ours(**args, generator=fx.gen(0)).frames
        want = theirs(**args, generator=fx.gen(0)).frames
        resnet = _wrappers(ours.unet)["up_blocks.1.resnets.0"]
    finally:
        for pipe in pair:
            pipe.disable_free_noise()
    assert resnet.chunks == 3 * resnet.calls > 0
    assert fx.max_diff(got, want) < 1e-3


def test_enabling_again_replaces_the_sizes(t2v):
    _, ours = t2v
    try:
        ours.enable_free_noise_split_inference(spatial_split_size=48, temporal_split_size=8)
        count = len(_wrappers(ours.unet))
        ours.enable_free_noise_split_inference(spatial_split_size=5, temporal_split_size=3)
        wrappers = _wrappers(ours.unet)
        assert len(wrappers) == count > 0
        assert all(not isinstance(w.original, SplitInference) for w in wrappers.values())  # not nested
        assert wrappers["down_blocks.0.resnets.0"].split_size == 3
        assert wrappers["mid_block.motion_modules.0.proj_in"].split_size == 5
    finally:
        ours.disable_free_noise()
    assert not _wrappers(ours.unet)


def test_wrapper_against_diffusers_module():
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 3)
    x = torch.randn(11, 6)
    theirs = SplitInferenceModule(linear, 4, 0, ["input"])(input=x)
    wrapper = SplitInference(linear, 4, ("input",))
    ours = wrapper(x)  # positional, as our stages call their layers
    assert torch.allclose(ours, theirs, atol=1e-6) and torch.allclose(ours, linear(x), atol=1e-6)
    assert (wrapper.calls, wrapper.chunks) == (1, 3)

    def pair(a, b, scale=1.0, extra=None):
        return a * scale, None if extra is None else b + extra

    module = torch.nn.Module()
    module.forward = pair
    a, b = torch.randn(7, 2), torch.randn(7, 2)
    split = SplitInference(module, 2, ("a", "b"))
    out = split(a, b=b, scale=2.0, extra=1.0)
    assert torch.equal(out[0], a * 2.0) and torch.equal(out[1], b + 1.0) and split.chunks == 4
    assert split(a, b)[1] is None


@pytest.mark.parametrize("settings, match", [
    (dict(spatial_split_size=0), r"spatial_split_size must be a positive int, got 0"),
    (dict(spatial_split_size=-4), "spatial_split_size must be a positive int"),
    (dict(temporal_split_size=2.5), r"temporal_split_size must be a positive int, got 2\.5"),
    (dict(temporal_split_size=True), "temporal_split_size must be a positive int"),
    (dict(temporal_split_size="16"), "temporal_split_size must be a positive int"),
])
def test_bad_split_sizes(t2v, settings, match):
    ours = t2v[1]
    with pytest.raises(ValueError, match=match):
        ours.enable_free_noise_split_inference(**settings)
    assert not _wrappers(ours.unet)
