"""KandinskyCombinedPipeline (2.1: prior then the text+image decoder) against Diffusers; folders both ways."""

from __future__ import annotations

import json

import pytest
import torch

import diffusers
import kernel
from kernel_kandinsky.combined21 import KandinskyCombinedPipeline

from kandinsky21_fixtures import combined21_pipes
from kandinsky_fixtures import EMBED, gen, max_diff

TOL = 1e-3
RUN = dict(height=32, width=32, num_inference_steps=3, prior_num_inference_steps=3, output_type="np")


@pytest.fixture(scope="module")
def pipes():
    return combined21_pipes()


CASES = {
    "default": dict(prompt="a red cat"),
    "negative_prompt": dict(prompt="a red cat", negative_prompt="blurry"),
    "batch_images_per_prompt": dict(prompt=["a red cat", "a dog"], num_images_per_prompt=2),
    "guidance_off": dict(prompt="a red cat", guidance_scale=1.0, prior_guidance_scale=1.0),
    "prior_latents": dict(prompt="a red cat", latents=torch.randn(1, EMBED, generator=gen(5))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_combined_matches_diffusers(pipes, case):
    ref, ours = pipes
    a = ref(**CASES[case], **RUN, generator=gen(2)).images
    b = ours(**CASES[case], **RUN, generator=gen(2)).images
    assert b.shape == a.shape and max_diff(a, b) < TOL
    assert float(torch.as_tensor(b).std()) > 0.01


def test_combined_tuple_and_components(pipes):
    _, ours = pipes
    out = ours("a cat", **RUN, generator=gen(), return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == (1, 32, 32, 3)
    assert ours.decoder_pipe.unet is ours.unet and ours.prior_pipe.prior is ours.prior_prior
    assert ours.decoder_pipe.text_encoder is ours.text_encoder


def test_combined_folders_both_ways(pipes, tmp_path):
    ref, ours = pipes
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    index = json.loads((tmp_path / "ours" / "model_index.json").read_text())
    assert index["text_encoder"] == ["kandinsky", "MultilingualCLIP"]
    back = diffusers.KandinskyCombinedPipeline.from_pretrained(tmp_path / "ours")
    mine = kernel.load(str(tmp_path / "theirs"))
    assert type(mine) is KandinskyCombinedPipeline
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    a, b = back("a cat", **RUN, generator=gen()).images, mine("a cat", **RUN, generator=gen()).images
    assert max_diff(a, b) < TOL and max_diff(b, ours("a cat", **RUN, generator=gen()).images) < TOL


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt=3), "prompt must be a str"),
    (dict(prompt="a", output_type="latent"), "output_type"),
    (dict(prompt="a", height=30), "height must be a positive multiple of 4"),
])
def test_combined_bad_input(pipes, kwargs, match):
    _, ours = pipes
    run = {**RUN, **{k: v for k, v in kwargs.items() if k in RUN}}
    with pytest.raises(ValueError, match=match):
        ours(**{k: v for k, v in kwargs.items() if k not in RUN}, **run, generator=gen())


# ------------------------------------------------------------------ image-to-image
def _image(seed: int = 0):
    import numpy as np
    import PIL.Image

    rng = np.random.RandomState(seed)
    return PIL.Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def img2img_pipes():
    return combined21_pipes("KandinskyImg2ImgCombinedPipeline")


IMG2IMG_CASES = {
    "default": dict(prompt="a red cat", image=_image()),
    "strength_negative": dict(prompt="a red cat", image=_image(), strength=0.75, negative_prompt="blurry"),
    "batch_one_image_tiled": dict(prompt=["a red cat", "a dog"], image=[_image(1)], num_images_per_prompt=2),
}


@pytest.mark.parametrize("case", list(IMG2IMG_CASES))
def test_img2img_combined_matches_diffusers(img2img_pipes, case):
    ref, ours = img2img_pipes
    run = {**RUN, "num_inference_steps": 4}
    a = ref(**IMG2IMG_CASES[case], **run, generator=gen(2)).images
    b = ours(**IMG2IMG_CASES[case], **run, generator=gen(2)).images
    assert b.shape == a.shape and max_diff(a, b) < TOL


def test_img2img_combined_folders_both_ways(img2img_pipes, tmp_path):
    from kernel_kandinsky.combined21 import KandinskyImg2ImgCombinedPipeline

    ref, ours = img2img_pipes
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    back = diffusers.KandinskyImg2ImgCombinedPipeline.from_pretrained(tmp_path / "ours")
    mine = kernel.load(str(tmp_path / "theirs"))
    assert type(mine) is KandinskyImg2ImgCombinedPipeline
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    a, b = (p("a cat", _image(), **{**RUN, "num_inference_steps": 4}, strength=0.5, generator=gen()).images
            for p in (back, mine))
    assert max_diff(a, b) < TOL


# ------------------------------------------------------------------ inpainting
def _mask():
    import numpy as np

    mask = np.zeros((32, 32), dtype=np.float32)
    mask[:16] = 1
    return mask


@pytest.fixture(scope="module")
def inpaint_pipes():
    return combined21_pipes("KandinskyInpaintCombinedPipeline", unet_over=(("in_channels", 9),))


INPAINT_CASES = {
    "default": dict(prompt="a red cat", image=_image(), mask_image=_mask()),
    "negative_prompt": dict(prompt="a red cat", image=_image(), mask_image=_mask(), negative_prompt="blurry"),
    "batch_lists_tiled": dict(prompt=["a red cat", "a dog"], image=[_image(1)], mask_image=[_mask()],
                              num_images_per_prompt=2),
}


@pytest.mark.parametrize("case", list(INPAINT_CASES))
def test_inpaint_combined_matches_diffusers(inpaint_pipes, case):
    ref, ours = inpaint_pipes
    a = ref(**INPAINT_CASES[case], **RUN, generator=gen(2)).images
    b = ours(**INPAINT_CASES[case], **RUN, generator=gen(2)).images
    assert b.shape == a.shape and max_diff(a, b) < TOL


def test_inpaint_combined_folders_both_ways(inpaint_pipes, tmp_path):
    from kernel_kandinsky.combined21 import KandinskyInpaintCombinedPipeline

    ref, ours = inpaint_pipes
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    back = diffusers.KandinskyInpaintCombinedPipeline.from_pretrained(tmp_path / "ours")
    mine = kernel.load(str(tmp_path / "theirs"))
    assert type(mine) is KandinskyInpaintCombinedPipeline
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    a, b = (p("a cat", _image(), _mask(), **RUN, generator=gen()).images for p in (back, mine))
    assert max_diff(a, b) < TOL
