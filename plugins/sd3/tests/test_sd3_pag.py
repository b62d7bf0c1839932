"""SD3 perturbed-attention guidance pipelines against Diffusers' (joint attention: image tokens see
themselves and the text)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kernel

diffusers = pytest.importorskip("diffusers")
sys.path.insert(0, str(Path(__file__).parent))
from test_sd3_pipelines import _components  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd3")
    diffusers.StableDiffusion3Pipeline(**_components()).save_pretrained(path)
    return path


def _pair(folder, name, layers):
    theirs = getattr(diffusers, name).from_pretrained(folder, pag_applied_layers=layers)
    ours = kernel.component(name).from_pretrained(folder, pag_applied_layers=layers)
    for p in (theirs, ours):
        p.set_progress_bar_config(disable=True)
    return theirs, ours


def _run(pipe, **kwargs):
    return pipe(generator=torch.Generator().manual_seed(0), output_type="np", max_sequence_length=16,
                num_inference_steps=3, **kwargs).images


@pytest.mark.parametrize("layers", ["blocks.1", ["blocks.0", "blocks.1"]])
@pytest.mark.parametrize("call", [dict(pag_scale=3.0), dict(pag_scale=2.0, guidance_scale=1.0),
                                  dict(pag_scale=2.0, pag_adaptive_scale=0.002, prompt=["a cat", "a dog"])],
                         ids=["cfg", "no-cfg", "adaptive-batch"])
def test_text_to_image_matches_diffusers(folder, layers, call):
    theirs, ours = _pair(folder, "StableDiffusion3PAGPipeline", layers)
    call = {"prompt": "a photo of a cat", "height": 32, "width": 32, **call}
    np.testing.assert_allclose(_run(ours, **call), _run(theirs, **call), atol=1e-4)


def test_img2img_matches_diffusers_and_scale_zero_is_plain(folder):
    from kernel_contracts.testing import random_image

    theirs, ours = _pair(folder, "StableDiffusion3PAGImg2ImgPipeline", "blocks.1")
    call = dict(prompt="a cat", image=random_image(32, 32), height=32, width=32, strength=0.7)
    np.testing.assert_allclose(_run(ours, pag_scale=3.0, **call), _run(theirs, pag_scale=3.0, **call), atol=1e-4)
    plain = kernel.component("StableDiffusion3Img2ImgPipeline").from_pipe(ours)
    assert np.array_equal(_run(ours, pag_scale=0.0, **call), _run(plain, **call))
