"""Issue 18's bad input across the Kandinsky 2.x stages: a prior and decoder that do not fit, a prior whose image
encoder gives another width, a hint the UNet cannot read, and ``strength`` checked before a combined pipeline's
prior runs."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

import kernel

from kandinsky_fixtures import EMBED, combined_pipes, decoder_pipes, embeds, gen, prior
from kandinsky21_fixtures import combined21_pipes


def test_combined_v22_refuses_a_prior_and_decoder_that_do_not_fit():
    with pytest.raises(ValueError, match="prior_prior makes image embeddings of width 32 but the decoder's unet takes "
                                         "width 16; this prior and decoder do not fit"):
        combined_pipes(unet_over={"encoder_hid_dim": 16})


def test_combined_v21_refuses_a_prior_and_decoder_that_do_not_fit():
    with pytest.raises(ValueError, match="prior_prior makes image embeddings of width 32 but the decoder's unet takes "
                                         "width 16"):
        combined21_pipes(unet_over={"cross_attention_dim": 16})


def test_fitting_stages_build():
    _, ours = combined_pipes()
    assert ours.prior_pipe.prior.config.embedding_dim == ours.decoder_pipe._embedding_width() == EMBED


@pytest.mark.parametrize("name", ["KandinskyV22PriorPipeline", "KandinskyV22PriorEmb2EmbPipeline",
                                  "KandinskyPriorPipeline"])
def test_prior_refuses_an_image_encoder_of_another_width(name):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from kandinsky_fixtures import image_processor, text_encoder, tokenizer

    config = CLIPVisionConfig(hidden_size=EMBED, image_size=32, projection_dim=16, intermediate_size=37,
                              num_attention_heads=4, num_channels=3, num_hidden_layers=1, patch_size=8)
    scheduler = kernel.component("UnCLIPScheduler")()
    with pytest.raises(ValueError, match="image_encoder gives image embeddings of width 16 .* prior makes embeddings "
                                         "of width 32"):
        kernel.component(name)(prior=prior()[1], image_encoder=CLIPVisionModelWithProjection(config),
                               text_encoder=text_encoder(), tokenizer=tokenizer(), scheduler=scheduler,
                               image_processor=image_processor())


def test_controlnet_hint_needs_three_channels():
    _, ours = decoder_pipes("KandinskyV22ControlnetPipeline",
                            unet_over={"in_channels": 8, "addition_embed_type": "image_hint"})
    pos, neg = embeds(1)
    with pytest.raises(ValueError, match="hint must have 3 channels .* got 1"):
        ours(pos, neg, hint=torch.rand(1, 1, 128, 128), height=32, width=32, num_inference_steps=2)


def _image() -> PIL.Image.Image:
    return PIL.Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8))


@pytest.mark.parametrize("strength", [1.5, -0.1])
def test_combined_img2img_checks_strength_before_the_prior(strength):
    _, ours = combined_pipes("KandinskyV22Img2ImgCombinedPipeline")
    prior_steps = []

    def record(pipe, i, t, tensors):
        prior_steps.append(i)
        return {}

    with pytest.raises(ValueError, match=r"strength must be a number in \[0.0, 1.0\]"):
        ours("a cat", _image(), strength=strength, height=32, width=32, num_inference_steps=4,
             prior_num_inference_steps=2, prior_callback_on_step_end=record, generator=gen())
    assert prior_steps == []  # refused before the prior ran


def test_combined_v21_img2img_checks_strength():
    _, ours = combined21_pipes("KandinskyImg2ImgCombinedPipeline")
    with pytest.raises(ValueError, match=r"strength must be a number in \[0.0, 1.0\]"):
        ours("a cat", _image(), strength=2.0, height=32, width=32, num_inference_steps=4, prior_num_inference_steps=2)
