"""Issue 18's Stable Cascade cases the other files leave out: a scheduler swap (the DDPM-Würstchen schedule is the
one Diffusers' stages accept; swapped for another configuration) for the prior and the decoder, the two stages
chained by hand against Diffusers' two stages, and a prior / decoder pair that does not fit."""

from __future__ import annotations

import functools

import pytest
import torch

from cascade_fixtures import DECODER, PRIOR, decoder_pipes, gen, max_diff, prior_pipes, unet_pair

diffusers = pytest.importorskip("diffusers")

TOL = 1e-3
SWAP = dict(scaler=2.0, s=0.02)


def _swapped(pipes):
    from kernel_stable_cascade import DDPMWuerstchenScheduler

    ref, ours = pipes
    ref = type(ref)(**{**ref.components, "scheduler": diffusers.DDPMWuerstchenScheduler(**SWAP)})
    ours = type(ours)(**{**ours.components, "scheduler": DDPMWuerstchenScheduler(**SWAP)})
    for pipe in (ref, ours):
        pipe.set_progress_bar_config(disable=True)
    return ref, ours


@functools.lru_cache(maxsize=None)
def _stages(swap: bool):
    prior, decoder = prior_pipes(), decoder_pipes()
    return (_swapped(prior), _swapped(decoder)) if swap else (prior, decoder)


def test_prior_scheduler_swap_matches_diffusers():
    (ref, ours), _ = _stages(True)
    kwargs = dict(prompt=["horse", "a red cat"], negative_prompt=["blurry", "ugly"], height=128, width=200,
                  num_inference_steps=3)
    a, b = ref(**kwargs, generator=gen(1)), ours(**kwargs, generator=gen(1))
    assert b.image_embeddings.shape == (2, 16, 3, 5)
    assert max_diff(a.image_embeddings, b.image_embeddings) < TOL
    (_, plain), _ = _stages(False)
    assert max_diff(b.image_embeddings, plain(**kwargs, generator=gen(1)).image_embeddings) > 1e-2  # a real swap


def test_decoder_scheduler_swap_matches_diffusers():
    _, (ref, ours) = _stages(True)
    emb = torch.randn(2, 16, 2, 3, generator=gen(3))
    kwargs = dict(image_embeddings=emb, prompt=["horse", "a cat"], negative_prompt=["blurry", "ugly"],
                  guidance_scale=2.0, num_inference_steps=3, output_type="np")
    a, b = ref(**kwargs, generator=gen(2)).images, ours(**kwargs, generator=gen(2)).images
    assert b.shape == (2, 84, 128, 3) and max_diff(a, b) < TOL
    _, (_, plain) = _stages(False)
    assert max_diff(b, plain(**kwargs, generator=gen(2)).images) > 1e-3


@pytest.mark.parametrize("swap", [False, True], ids=["default", "scheduler_swap"])
def test_chained_stages_match_diffusers(swap):
    """The decoder fed the prior's output (embeddings and the prior's text embeddings), both stages on one
    generator: ours against Diffusers'."""
    (p_ref, p_ours), (d_ref, d_ours) = _stages(swap)

    def chain(prior, decoder):
        g = gen(4)
        stage_c = prior(["horse", "a cat"], negative_prompt=["blurry", "ugly"], height=128, width=128,
                        num_inference_steps=2, generator=g)
        return decoder(stage_c.image_embeddings, prompt_embeds=stage_c.prompt_embeds,
                       prompt_embeds_pooled=stage_c.prompt_embeds_pooled, num_inference_steps=2, generator=g,
                       output_type="np").images

    a, b = chain(p_ref, d_ref), chain(p_ours, d_ours)
    assert b.shape == (2, 128, 128, 3) and max_diff(a, b) < TOL and float(b.std()) > 0.01


def test_combined_refuses_a_prior_and_decoder_that_do_not_fit():
    from cascade_fixtures import scheduler_pair, text_encoder, tokenizer, vqgan_pair

    from kernel_stable_cascade import StableCascadeCombinedPipeline

    prior = unet_pair({**PRIOR, "out_channels": 8}, std=0.03)[1]
    decoder, vqgan = unet_pair(DECODER, seed=1)[1], vqgan_pair()[1]
    kwargs = dict(text_encoder=text_encoder(), tokenizer=tokenizer(), decoder=decoder, scheduler=scheduler_pair()[1],
                  vqgan=vqgan, prior_text_encoder=text_encoder(), prior_tokenizer=tokenizer(),
                  prior_scheduler=scheduler_pair()[1])
    with pytest.raises(ValueError, match=r"prior_prior makes image embeddings of 8 channels .* decoder reads 16 "
                                         r"\(config.effnet_in_channels\); this prior and decoder do not fit"):
        StableCascadeCombinedPipeline(prior_prior=prior, **kwargs)
    fits = unet_pair(PRIOR, std=0.03)[1]
    assert StableCascadeCombinedPipeline(prior_prior=fits, **kwargs).prior_pipe.prior is fits
