"""Flux pipelines against Diffusers (the oracle): tiny components saved by Diffusers, loaded with kernel.load."""

import logging

import numpy as np
import pytest
import torch

import kernel

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_flux_components):
    out = {}
    for name, guidance in (("dev", True), ("schnell", False)):
        theirs = diffusers.FluxPipeline(**tiny_flux_components(guidance))
        path = tmp_path_factory.mktemp(name)
        theirs.save_pretrained(path)
        out[name] = (path, theirs)
    return out


def _run(pipe, **kwargs):
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    pipe.set_progress_bar_config(disable=True)
    return pipe(output_type="np", max_sequence_length=16, **kwargs).images


@pytest.mark.parametrize("variant,kwargs", [
    ("dev", dict(prompt="a photo of a cat", height=32, width=32, num_inference_steps=2, guidance_scale=4.0)),
    ("dev", dict(prompt=["a cat", "the dog"], height=16, width=48, num_inference_steps=3, num_images_per_prompt=2)),
    ("schnell", dict(prompt="a dog", prompt_2="a cat", height=32, width=16, num_inference_steps=2)),
    ("schnell", dict(prompt="a dog", negative_prompt="cat", true_cfg_scale=2.0, height=32, width=32,
                     num_inference_steps=2)),
], ids=["dev-square", "dev-batch-nonsquare", "schnell-prompt2", "schnell-true-cfg"])
def test_text_to_image_matches_diffusers(folders, variant, kwargs):
    path, theirs = folders[variant]
    ours = kernel.load("flux", path)
    np.testing.assert_allclose(_run(ours, **kwargs), _run(theirs, **kwargs), atol=1e-3, rtol=0)


def test_img2img_matches_diffusers(folders):
    path, _ = folders["dev"]
    theirs = diffusers.FluxImg2ImgPipeline.from_pretrained(path)
    ours = kernel.component("FluxImg2ImgPipeline").from_pretrained(path)
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for strength, steps in ((0.6, 4), (1.0, 2)):
        kwargs = dict(prompt=["a cat", "a dog"], image=image, strength=strength, height=32, width=32,
                      num_inference_steps=steps)
        np.testing.assert_allclose(_run(ours, **kwargs), _run(theirs, **kwargs), atol=1e-3, rtol=0)


def test_saved_by_us_loads_in_diffusers_and_embeds(folders, tmp_path):
    path, theirs = folders["dev"]
    ours = kernel.load(path)
    ours.save_pretrained(tmp_path)
    back = diffusers.FluxPipeline.from_pretrained(tmp_path)
    embeds, pooled, ids = ours.encode_prompt("a cat", max_sequence_length=16)
    ref = theirs.encode_prompt("a cat", max_sequence_length=16)
    for a, b in zip((embeds, pooled, ids), ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    kwargs = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=32, width=32, num_inference_steps=2)
    np.testing.assert_allclose(_run(back, **kwargs), _run(theirs, **kwargs), atol=1e-3, rtol=0)


def test_bad_inputs(folders, caplog):
    ours = kernel.load(folders["schnell"][0])
    with pytest.raises(ValueError, match="multiple of 4"):
        ours(prompt="a", height=30, width=32)
    with pytest.raises(ValueError, match="max_sequence_length"):
        ours(prompt="a", height=32, width=32, max_sequence_length=600)
    embeds, pooled, _ = ours.encode_prompt("a", max_sequence_length=16)
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        ours(prompt_embeds=embeds, height=32, width=32)
    with pytest.raises(ValueError, match="pooled_projection_dim"):
        ours(prompt_embeds=embeds, pooled_prompt_embeds=pooled[:, :7], height=32, width=32)
    with pytest.raises(ValueError, match="does not match"):
        ours(prompt_embeds=embeds, pooled_prompt_embeds=torch.cat([pooled] * 2), height=32, width=32)
    with caplog.at_level(logging.WARNING):
        _run(ours, prompt="a", height=32, width=32, num_inference_steps=1, guidance_scale=5.0)
    assert "guidance_scale=5.0 is ignored" in caplog.text


def test_guiders_are_components_in_flux(folders):
    """``true_cfg_scale`` builds a TrueClassifierFreeGuidance; setting it (or batched CFG) as ``pipe.guider``
    gives the same picture, and a guider's passes reach the transformer (guidance embedding per row)."""
    ours = kernel.load(folders["dev"][0])
    call = dict(prompt="a dog", negative_prompt="cat", height=32, width=32, num_inference_steps=2)
    by_argument = _run(ours, true_cfg_scale=3.0, **call)
    ours.guider = kernel.component("TrueClassifierFreeGuidance")(guidance_scale=3.0)
    assert np.array_equal(_run(ours, **call), by_argument)
    ours.guider = kernel.component("ClassifierFreeGuidance")(guidance_scale=3.0)  # one batched call
    np.testing.assert_allclose(_run(ours, **call), by_argument, atol=1e-5)
    ours.guider = None
    assert not np.allclose(_run(ours, **call), by_argument, atol=1e-3)
