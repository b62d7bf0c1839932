"""Motion LoRAs (LoRA weights on the motion modules' attention, as guoyww's zoom / pan LoRAs) against Diffusers
0.42.1: the same file loaded by both pipelines gives the same video, with adapter names, weights and unloading."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import diffusers

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

BASE = dict(prompt="a cat walks", num_frames=fx.FRAMES, height=fx.SIZE, width=fx.SIZE, num_inference_steps=2,
            output_type="np")
ATOL = 1e-3
MOTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def motion_lora(unet, rank=4, seed=0, strength=0.8) -> dict:
    """peft-layout LoRA weights (``unet.<layer>.lora_A.weight`` ...) for the attention layers of every motion module."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in unet.named_modules():
        if "motion_modules" not in name or not name.endswith(MOTION_TARGETS) or not isinstance(module, torch.nn.Linear):
            continue
        out[f"unet.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) * strength
        out[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * strength
    assert out, "no motion-module layers found"
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    theirs, ours = fx.pipelines()
    folders = {}
    for name, seed in (("zoom", 0), ("pan", 1)):
        folders[name] = tmp_path_factory.mktemp(f"motion-lora-{name}")
        layers = motion_lora(theirs.unet, seed=seed)
        diffusers.AnimateDiffPipeline.save_lora_weights(folders[name], unet_lora_layers=
                                                        {k[len("unet."):]: v for k, v in layers.items()})
    return theirs, ours, folders


def _both(theirs, ours, **kw):
    args = {**BASE, **kw}
    return ours(**args, generator=fx.gen(0)).frames, theirs(**args, generator=fx.gen(0)).frames


def test_motion_lora_matches_diffusers(setup):
    theirs, ours, folders = setup
    plain, _ = _both(theirs, ours)
    for pipe in (theirs, ours):
        pipe.load_lora_weights(folders["zoom"], adapter_name="zoom")
    try:
        got, want = _both(theirs, ours)
        diff = fx.max_diff(got, want)
        print(f"max diff motion LoRA: {diff:.2e}")
        assert diff < ATOL
        assert fx.max_diff(got, plain) > 1e-2, "the motion LoRA should change the video"
        # a second motion LoRA, both active with weights
        for pipe in (theirs, ours):
            pipe.load_lora_weights(folders["pan"], adapter_name="pan")
            pipe.set_adapters(["zoom", "pan"], adapter_weights=[0.7, 0.4])
        got, want = _both(theirs, ours)
        diff = fx.max_diff(got, want)
        print(f"max diff two motion LoRAs 0.7/0.4: {diff:.2e}")
        assert diff < ATOL
    finally:
        for pipe in (theirs, ours):
            pipe.unload_lora_weights()
    again, _ = _both(theirs, ours)
    assert fx.max_diff(again, plain) < 1e-6


def test_motion_lora_in_the_converted_zoo_layout_matches_diffusers(setup):
    """Diffusers' converted guoyww motion LoRAs use ``unet.<layer>.lora.down.weight`` / ``.lora.up.weight`` keys."""
    theirs, ours, _ = setup
    layers = {k.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight"): v
              for k, v in motion_lora(theirs.unet, seed=2).items()}
    plain, _ = _both(theirs, ours)
    for pipe in (theirs, ours):
        pipe.load_lora_weights(dict(layers), adapter_name="zoo")
    try:
        got, want = _both(theirs, ours)
    finally:
        for pipe in (theirs, ours):
            pipe.unload_lora_weights()
    diff = fx.max_diff(got, want)
    print(f"max diff motion LoRA (lora.down/up layout): {diff:.2e}")
    assert diff < ATOL and fx.max_diff(got, plain) > 1e-2
