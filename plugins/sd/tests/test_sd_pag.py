"""Perturbed-attention guidance pipelines (SD and SDXL) against Diffusers' PAG pipelines."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import kernel

sys.path.insert(0, str(Path(__file__).parent))
import sd_fixtures as fx  # noqa: E402
from sd_fixtures import single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("single_thread")


def _pair(name: str, layers, xl: bool = False):
    theirs_parts, ours_parts = fx.xl_components() if xl else fx.sd_components()
    theirs = getattr(diffusers, name)(**theirs_parts, pag_applied_layers=layers)
    ours = kernel.component(name)(**ours_parts, pag_applied_layers=layers)
    for p in (theirs, ours):
        p.set_progress_bar_config(disable=True)
    return theirs, ours


def _inputs(task: str, **kwargs):
    base = dict(prompt="a photo of a cat", num_inference_steps=3, output_type="np")
    if task == "text":
        base.update(height=32, width=32)
    if task in ("image", "inpaint"):
        base.update(image=fx.image(32, 32), strength=0.7)
    if task == "inpaint":
        base.update(mask_image=fx.mask(32, 32))
    return {**base, **kwargs}


def _same(theirs, ours, **call):
    a = theirs(generator=fx.gen(0), **call).images
    b = ours(generator=fx.gen(0), **call).images
    fx.assert_images_close(a, b, atol=1e-4)


CASES = [
    dict(pag_scale=3.0),
    dict(pag_scale=3.0, guidance_scale=1.0),                       # PAG without CFG
    dict(pag_scale=2.0, pag_adaptive_scale=0.002, guidance_rescale=0.5),
    dict(pag_scale=1.5, prompt=["a cat", "a dog"], negative_prompt=["blurry", "dark"], num_images_per_prompt=2),
]


@pytest.mark.parametrize("call", CASES, ids=["cfg", "no-cfg", "adaptive-rescale", "batch"])
@pytest.mark.parametrize("layers", [["mid"], ["down_blocks.1", "up"]], ids=["mid", "down1-up"])
def test_sd_text_to_image_matches_diffusers(layers, call):
    theirs, ours = _pair("StableDiffusionPAGPipeline", layers)
    _same(theirs, ours, **_inputs("text", **call))


@pytest.mark.parametrize("name,task", [("StableDiffusionPAGImg2ImgPipeline", "image"),
                                       ("StableDiffusionPAGInpaintPipeline", "inpaint")])
def test_sd_image_tasks_match_diffusers(name, task):
    theirs, ours = _pair(name, ["mid", "up"])
    _same(theirs, ours, **_inputs(task, pag_scale=2.5))
    _same(theirs, ours, **_inputs(task, pag_scale=2.5, guidance_scale=1.0))


@pytest.mark.parametrize("name,task", [("StableDiffusionXLPAGPipeline", "text"),
                                       ("StableDiffusionXLPAGImg2ImgPipeline", "image"),
                                       ("StableDiffusionXLPAGInpaintPipeline", "inpaint")])
def test_sdxl_matches_diffusers(name, task):
    theirs, ours = _pair(name, ["mid"], xl=True)
    _same(theirs, ours, **_inputs(task, pag_scale=3.0))
    _same(theirs, ours, **_inputs(task, pag_scale=2.0, pag_adaptive_scale=0.001, guidance_scale=1.0))


@pytest.mark.parametrize("name,plain,task", [
    ("StableDiffusionPAGPipeline", "StableDiffusionPipeline", "text"),
    ("StableDiffusionPAGInpaintPipeline", "StableDiffusionInpaintPipeline", "inpaint"),
])
def test_pag_scale_zero_is_the_plain_pipeline(name, plain, task):
    _, parts = fx.sd_components()
    pag = kernel.component(name)(**parts)
    base = kernel.component(plain)(**parts)
    for p in (pag, base):
        p.set_progress_bar_config(disable=True)
    call = _inputs(task)
    assert torch.equal(torch.as_tensor(pag(generator=fx.gen(0), pag_scale=0.0, **call).images),
                       torch.as_tensor(base(generator=fx.gen(0), **call).images))


def test_layers_round_trip_through_model_index_both_ways(tmp_path):
    theirs, ours = _pair("StableDiffusionPAGPipeline", ["down_blocks.1", "up"])
    ours.save_pretrained(tmp_path / "ours")
    assert kernel.load(tmp_path / "ours").pag_applied_layers == ["down_blocks.1", "up"]
    back = diffusers.StableDiffusionPAGPipeline.from_pretrained(tmp_path / "ours")
    assert back.pag_applied_layers == ["down_blocks.1", "up"]
    theirs.save_pretrained(tmp_path / "theirs")  # Diffusers does not record the layers: the default applies
    loaded = kernel.load(tmp_path / "theirs")
    assert type(loaded).__name__ == "StableDiffusionPAGPipeline" and loaded.pag_applied_layers == ["mid"]
    assert kernel.load(tmp_path / "theirs", pag_applied_layers="up").pag_applied_layers == ["up"]


def test_auto_pipeline_enable_pag(tmp_path):
    theirs, _ = _pair("StableDiffusionPAGPipeline", ["mid"])
    diffusers.StableDiffusionPipeline.from_pipe(theirs).save_pretrained(tmp_path)
    auto = kernel.component("AutoPipelineForText2Image")
    pipe = auto.from_pretrained(tmp_path, enable_pag=True, pag_applied_layers=["up"])
    assert type(pipe).__name__ == "StableDiffusionPAGPipeline" and pipe.pag_applied_layers == ["up"]
    img2img = kernel.component("AutoPipelineForImage2Image").from_pipe(pipe)
    assert type(img2img).__name__ == "StableDiffusionPAGImg2ImgPipeline"
    plain = kernel.component("AutoPipelineForImage2Image").from_pipe(pipe, enable_pag=False)
    assert type(plain).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(auto.from_pretrained(tmp_path)).__name__ == "StableDiffusionPipeline"


def test_bad_pag_arguments_are_named():
    _, ours = _pair("StableDiffusionPAGPipeline", ["mid"])
    with pytest.raises(ValueError, match="pag_applied_layers entry 'nowhere'"):
        ours(generator=fx.gen(0), **_inputs("text", pag_scale=1.0)) if ours.set_pag_applied_layers("nowhere") \
            is None else None
    ours.set_pag_applied_layers("mid")
    for bad in (dict(pag_scale=-1.0), dict(pag_scale=float("nan")), dict(pag_adaptive_scale=-0.1)):
        with pytest.raises(ValueError, match="pag_"):
            ours(generator=fx.gen(0), **_inputs("text", **bad))
    with pytest.raises(ValueError, match="pag_applied_layers"):
        ours.set_pag_applied_layers([])
