"""StableCascadeCombinedPipeline: against Diffusers', equal to the two stages run by hand, folders both ways,
the family aliases and AutoPipelineForText2Image."""

from __future__ import annotations

import functools
import json

import pytest
import torch

import kernel
from cascade_fixtures import combined_pipes, gen, max_diff
from kernel_stable_cascade import (StableCascadeCombinedPipeline, StableCascadeDecoderPipeline,
                                   StableCascadePriorPipeline)

diffusers = pytest.importorskip("diffusers")
from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel as RefPaella  # noqa: E402

TOL = 1e-3
RUN = dict(height=128, width=200, prior_num_inference_steps=2, num_inference_steps=2, output_type="np")


@functools.lru_cache(maxsize=None)
def pipes():
    return combined_pipes()


@pytest.mark.parametrize("extra", [
    {},
    {"prompt": ["horse", "a cat"], "negative_prompt": ["blurry", "ugly"], "decoder_guidance_scale": 2.0},
    {"num_images_per_prompt": 2, "prior_guidance_scale": 1.0},
    {"latents": torch.randn(1, 16, 3, 5, generator=gen(5))},
], ids=["default", "negatives-decoder-cfg", "images-per-prompt-no-cfg", "latents"])
def test_matches_diffusers(extra):
    ref, ours = pipes()
    kwargs = {"prompt": "horse", **RUN, **extra}
    a = ref(generator=gen(0), **kwargs).images
    b = ours(generator=gen(0), **kwargs).images
    # embedding ceil(128 / 42.67) x ceil(200 / 42.67) = 3 x 5 -> latents 32 x 53 -> pixels (x4) 128 x 212
    assert b.shape == (a.shape[0], 128, 212, 3)
    assert max_diff(a, b) < TOL


def test_equals_the_two_stages_by_hand():
    _, ours = pipes()
    prior = StableCascadePriorPipeline(prior=ours.prior_prior, text_encoder=ours.prior_text_encoder,
                                       tokenizer=ours.prior_tokenizer, scheduler=ours.prior_scheduler)
    decoder = StableCascadeDecoderPipeline(decoder=ours.decoder, text_encoder=ours.text_encoder,
                                           tokenizer=ours.tokenizer, scheduler=ours.scheduler, vqgan=ours.vqgan)
    for pipe in (prior, decoder):
        pipe.set_progress_bar_config(disable=True)
    g = gen(4)
    stage_c = prior(["horse", "a cat"], negative_prompt="blurry", height=128, width=200, num_inference_steps=2,
                    generator=g)
    by_hand = decoder(stage_c.image_embeddings, prompt_embeds=stage_c.prompt_embeds,
                      prompt_embeds_pooled=stage_c.prompt_embeds_pooled, num_inference_steps=2, generator=g,
                      output_type="pt").images
    combined = ours(["horse", "a cat"], negative_prompt="blurry", **{**RUN, "output_type": "pt"}, generator=gen(4))
    assert torch.equal(combined.images, by_hand)


def test_prompt_embeds_match_diffusers():
    ref, ours = pipes()
    enc = ours.prior_pipe(["horse", "a cat"], negative_prompt=["blurry", "ugly"], height=128, width=128,
                          num_inference_steps=1, generator=gen(0))
    kwargs = dict(RUN, prompt_embeds=enc.prompt_embeds, prompt_embeds_pooled=enc.prompt_embeds_pooled,
                  negative_prompt_embeds=enc.negative_prompt_embeds,
                  negative_prompt_embeds_pooled=enc.negative_prompt_embeds_pooled)
    assert max_diff(ref(generator=gen(0), **kwargs).images, ours(generator=gen(0), **kwargs).images) < TOL


def test_decoder_guidance_without_prior_guidance_uses_the_negative_prompts():
    # Diffusers fails here (the prior returns no negative embeddings); the decoder encodes one negative per row
    _, ours = pipes()
    kwargs = dict(RUN, prompt=["horse", "a cat"], negative_prompt=["blurry", "ugly"], num_images_per_prompt=2,
                  prior_guidance_scale=1.0, decoder_guidance_scale=3.0, output_type="pt")
    guided = ours(generator=gen(0), **kwargs).images
    g = gen(0)
    stage_c = ours.prior_pipe(["horse", "a cat"], height=128, width=200, num_inference_steps=2, guidance_scale=1.0,
                              num_images_per_prompt=2, generator=g)
    assert stage_c.negative_prompt_embeds is None
    by_hand = ours.decoder_pipe(stage_c.image_embeddings, prompt_embeds=stage_c.prompt_embeds,
                                prompt_embeds_pooled=stage_c.prompt_embeds_pooled,
                                negative_prompt=["blurry", "blurry", "ugly", "ugly"], guidance_scale=3.0,
                                num_inference_steps=2, output_type="pt", generator=g).images
    assert guided.shape == (4, 3, 128, 212) and torch.equal(guided, by_hand)
    unguided = ours(generator=gen(0), **{**kwargs, "decoder_guidance_scale": 0.0}).images
    assert max_diff(guided, unguided) > 1e-3


def test_callbacks_reach_both_stages():
    _, ours = pipes()
    seen = {"prior": [], "decoder": []}
    ours("horse", **RUN, generator=gen(0),
         prior_callback_on_step_end=lambda p, i, t, k: seen["prior"].append(type(p).__name__) or {},
         callback_on_step_end=lambda p, i, t, k: seen["decoder"].append(type(p).__name__) or {})
    assert seen == {"prior": ["StableCascadePriorPipeline"] * 2, "decoder": ["StableCascadeDecoderPipeline"] * 2}


def test_bad_input_reaches_the_stages():
    _, ours = pipes()
    with pytest.raises(ValueError, match="height"):
        ours("horse", **{**RUN, "height": -8})
    with pytest.raises(ValueError, match="output_type"):
        ours("horse", **{**RUN, "output_type": "jpeg"})


def test_folders_both_ways_aliases_and_auto_pipeline(tmp_path):
    from kernel_sd.auto import AutoPipelineForText2Image

    ref, ours = pipes()
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    index = json.loads((tmp_path / "ours" / "model_index.json").read_text())
    assert index["vqgan"] == ["stable_cascade", "PaellaVQModel"] and index["prior_prior"] == ["diffusers", "StableCascadeUNet"]
    # Diffusers 0.42.1 cannot resolve its own ["diffusers", "PaellaVQModel"] entry (the class moved to its deprecated
    # Würstchen package), so it is given the stage A model, loaded from our folder
    vqgan = RefPaella.from_pretrained(tmp_path / "ours" / "vqgan")
    back = diffusers.StableCascadeCombinedPipeline.from_pretrained(tmp_path / "ours", vqgan=vqgan)
    mine = kernel.load("stable-cascade", str(tmp_path / "theirs"))
    assert isinstance(mine, StableCascadeCombinedPipeline)
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    assert max_diff(back("horse", **RUN, generator=gen()).images, mine("horse", **RUN, generator=gen()).images) < TOL
    assert type(AutoPipelineForText2Image.from_pretrained(tmp_path / "ours")) is StableCascadeCombinedPipeline

    # the decoder folder alone: the decoder pipeline (Diffusers fetches the prior named in the model card)
    ours.decoder_pipe.save_pretrained(tmp_path / "decoder")
    ours.prior_pipe.save_pretrained(tmp_path / "prior")
    assert type(AutoPipelineForText2Image.from_pretrained(tmp_path / "decoder")) is StableCascadeDecoderPipeline
    assert type(kernel.load("stable-cascade-prior", str(tmp_path / "prior"))) is StableCascadePriorPipeline
    assert type(kernel.load("stable-cascade-decoder", str(tmp_path / "decoder"))) is StableCascadeDecoderPipeline
    assert kernel.component("StableCascadeCombinedPipeline") is StableCascadeCombinedPipeline
