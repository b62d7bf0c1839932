"""PixArt-Sigma perturbed-attention guidance against Diffusers' PixArtSigmaPAGPipeline."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kernel

diffusers = pytest.importorskip("diffusers")
sys.path.insert(0, str(Path(__file__).parent))
from test_pixart_pipelines import _components  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("sigma")
    diffusers.PixArtSigmaPipeline(**_components(32)).save_pretrained(path)
    return path


def _run(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(0), output_type="np", max_sequence_length=12,
                num_inference_steps=3, height=32, width=32, use_resolution_binning=False, **kwargs).images


@pytest.mark.parametrize("layers,call", [
    ("blocks.1", dict(pag_scale=3.0)),
    (["blocks.0", "blocks.1"], dict(pag_scale=2.0, guidance_scale=1.0)),
    # (Diffusers' PixArt PAG pipeline fails with pag_adaptive_scale > 0: it compares a batched timestep)
    ("blocks.1", dict(pag_scale=2.0, prompt=["a cat", "a dog"], num_images_per_prompt=2)),
], ids=["cfg", "no-cfg-two-layers", "batch"])
def test_matches_diffusers(folder, layers, call):
    theirs = diffusers.PixArtSigmaPAGPipeline.from_pretrained(folder, pag_applied_layers=layers)
    ours = kernel.component("PixArtSigmaPAGPipeline").from_pretrained(folder, pag_applied_layers=layers)
    call = {"prompt": "a photo of a cat", **call}
    np.testing.assert_allclose(_run(ours, **call), _run(theirs, **call), atol=1e-4)


def test_scale_zero_is_the_plain_pipeline(folder):
    ours = kernel.component("PixArtSigmaPAGPipeline").from_pretrained(folder)
    plain = kernel.component("PixArtSigmaPipeline").from_pipe(ours)
    assert np.array_equal(_run(ours, prompt="a cat", pag_scale=0.0), _run(plain, prompt="a cat"))
