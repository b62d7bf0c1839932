"""The combined (prior + decoder) pipelines against Diffusers, the family alias and folders both ways."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

import diffusers
import kernel
from kernel_kandinsky import KandinskyV22CombinedPipeline

from kandinsky_fixtures import EMBED, combined_pipes, gen, max_diff

TOL = 1e-3
RUN = dict(height=32, width=32, num_inference_steps=3, prior_num_inference_steps=3, output_type="np")


@pytest.fixture(scope="module")
def pipes():
    return combined_pipes()


CASES = {
    "default": dict(prompt="a red cat"),
    "negative_prompt": dict(prompt="a red cat", negative_prompt="blurry"),
    "batch": dict(prompt=["a red cat", "a dog"], num_images_per_prompt=2),
    "prior_latents": dict(prompt="a red cat", latents=torch.randn(1, EMBED, generator=torch.Generator().manual_seed(4))),
    "guidance_off": dict(prompt="a red cat", guidance_scale=1.0, prior_guidance_scale=1.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_combined_matches_diffusers(pipes, case):
    ref, ours = pipes
    a = ref(**CASES[case], **RUN, generator=gen(2)).images
    b = ours(**CASES[case], **RUN, generator=gen(2)).images
    assert b.shape == a.shape and max_diff(a, b) < TOL and float(b.std()) > 0.01


def test_combined_shares_modules_with_its_stages(pipes):
    _, ours = pipes
    assert ours.prior_pipe.prior is ours.prior_prior and ours.decoder_pipe.unet is ours.unet
    assert set(ours.components) == {"unet", "scheduler", "movq", "prior_prior", "prior_image_encoder",
                                    "prior_text_encoder", "prior_tokenizer", "prior_scheduler",
                                    "prior_image_processor"}


def test_stage_callbacks_run(pipes):
    _, ours = pipes
    prior_steps, decoder_steps = [], []
    ours("a cat", **RUN, generator=gen(),
         prior_callback_on_step_end=lambda p, i, t, k: prior_steps.append(i) or {},
         callback_on_step_end=lambda p, i, t, k: decoder_steps.append(i) or {})
    assert prior_steps == [0, 1, 2] and decoder_steps == [0, 1, 2]


def test_folders_both_ways_and_alias(pipes, tmp_path):
    ref, ours = pipes
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    back = diffusers.KandinskyV22CombinedPipeline.from_pretrained(tmp_path / "ours")
    mine = kernel.load("kandinsky22", str(tmp_path / "theirs"))
    assert isinstance(mine, KandinskyV22CombinedPipeline)
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    a, b = back("a cat", **RUN, generator=gen()).images, mine("a cat", **RUN, generator=gen()).images
    assert max_diff(a, b) < TOL


def test_auto_text2image_keeps_the_combined_pipeline(pipes, tmp_path):
    from kernel_sd.auto import AutoPipelineForText2Image

    _, ours = pipes
    ours.save_pretrained(tmp_path / "c")
    assert type(AutoPipelineForText2Image.from_pretrained(tmp_path / "c")) is KandinskyV22CombinedPipeline



def test_auto_image2image_and_inpainting_pick_the_combined_variants(pipes):
    from kernel_sd.auto import AutoPipelineForImage2Image, AutoPipelineForInpainting

    _, ours = pipes
    img2img = AutoPipelineForImage2Image.from_pipe(ours)
    inpaint = AutoPipelineForInpainting.from_pipe(img2img)
    assert type(img2img).__name__ == "KandinskyV22Img2ImgCombinedPipeline"
    assert type(inpaint).__name__ == "KandinskyV22InpaintCombinedPipeline"
    assert inpaint.decoder_pipe.unet is ours.decoder_pipe.unet

def _image(seed=0):
    return PIL.Image.fromarray((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype(np.uint8))


def test_img2img_combined_matches_diffusers():
    ref, ours = combined_pipes("KandinskyV22Img2ImgCombinedPipeline")
    kwargs = dict(prompt=["a cat", "a dog"], image=_image(), **{**RUN, "num_inference_steps": 10}, strength=0.5)
    a, b = ref(**kwargs, generator=gen(1)).images, ours(**kwargs, generator=gen(1)).images
    assert max_diff(a, b) < TOL and b.shape[0] == 2


def test_inpaint_combined_matches_diffusers():
    ref, ours = combined_pipes("KandinskyV22InpaintCombinedPipeline", unet_over={"in_channels": 9})
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[:16] = 1
    kwargs = dict(prompt="a cat", image=_image(), mask_image=mask, **RUN)
    a, b = ref(**kwargs, generator=gen(1)).images, ours(**kwargs, generator=gen(1)).images
    assert max_diff(a, b) < TOL


def test_combined_bad_input_reaches_the_right_stage(pipes):
    _, ours = pipes
    with pytest.raises(ValueError, match="prompt must be a str"):
        ours(7, **RUN)
    with pytest.raises(ValueError, match="height must be a positive multiple of 4"):
        ours("a cat", **{**RUN, "height": 30})


def test_combined_from_the_two_stage_pipelines_as_in_the_docs():
    from kandinsky_fixtures import decoder_pipes, prior_pipes

    ref, _ = combined_pipes()
    _, prior = prior_pipes()
    _, decoder = decoder_pipes()
    pipe = KandinskyV22CombinedPipeline(**{f"prior_{k}": v for k, v in prior.components.items()},
                                        **decoder.components)
    pipe.set_progress_bar_config(disable=True)
    a, b = ref("a cat", **RUN, generator=gen()).images, pipe("a cat", **RUN, generator=gen()).images
    assert max_diff(a, b) < TOL
