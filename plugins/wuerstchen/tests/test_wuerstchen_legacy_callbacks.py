"""Diffusers' deprecated callback / callback_steps keywords, still taken by the Würstchen pipelines in 0.42.1 (and
prior_callback / prior_callback_steps by the combined one): the same steps, timesteps and latents as Diffusers',
a FutureWarning, and clear errors for bad values or unknown keywords."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from wuerstchen_fixtures import combined_pipes, decoder_pipes, gen, prior_pipes

pytest.importorskip("diffusers")

TOL = 1e-5


def _recorder():
    calls = []

    def callback(step, timestep, latents):
        calls.append((step, float(timestep), latents.detach().clone()))

    return calls, callback


def _same_calls(ours, ref, tol=TOL):
    assert [(s, round(t, 6)) for s, t, _ in ours] == [(s, round(t, 6)) for s, t, _ in ref]
    for (_, _, a), (_, _, b) in zip(ours, ref):
        assert a.shape == b.shape and ((a - b).abs().max() / b.abs().max()).item() < tol  # relative: latents ~100


@functools.lru_cache(maxsize=None)
def _priors():
    return prior_pipes()


@functools.lru_cache(maxsize=None)
def _decoders():
    return decoder_pipes()


@pytest.mark.parametrize("steps", [1, 2])
def test_prior_legacy_callback_matches_diffusers(steps):
    ref, ours = _priors()
    run = dict(prompt="horse", num_inference_steps=3, height=128, width=128)
    got, cb = _recorder()
    with pytest.warns(FutureWarning, match="callback"):
        out = ours(**run, generator=gen(), callback=cb, callback_steps=steps).image_embeddings
    expected, ref_cb = _recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_out = ref(**run, generator=gen(), callback=ref_cb, callback_steps=steps).image_embeddings
    assert [s for s, _, _ in got] == list(range(0, 3, steps))
    _same_calls(got, expected)
    # the embeddings are latents x latent_mean (42): compare relative to their size
    assert ((out - ref_out).abs().max() / ref_out.abs().max()).item() < 1e-5


def test_decoder_legacy_callback_matches_diffusers():
    ref, ours = _decoders()
    embeds = torch.randn(1, 16, 6, 6, generator=gen(3))
    run = dict(image_embeddings=embeds, prompt="horse", num_inference_steps=3, guidance_scale=2.0, output_type="pt")
    got, cb = _recorder()
    with pytest.warns(FutureWarning):
        ours(**run, generator=gen(), callback=cb, callback_steps=2)
    expected, ref_cb = _recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref(**run, generator=gen(), callback=ref_cb, callback_steps=2)
    assert [s for s, _, _ in got] == [0, 2]
    _same_calls(got, expected)


def test_combined_routes_prior_and_decoder_callbacks_as_diffusers():
    ref, ours = combined_pipes()
    run = dict(prompt="horse", prior_num_inference_steps=2, num_inference_steps=3, height=128, width=128,
               output_type="np")
    results = []
    for pipe in (ours, ref):
        (prior_calls, prior_cb), (calls, cb) = _recorder(), _recorder()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe(**run, generator=gen(), prior_callback=prior_cb, prior_callback_steps=1, callback=cb,
                 callback_steps=2)
        results.append((prior_calls, calls))
    (our_prior, our_decoder), (ref_prior, ref_decoder) = results
    assert len(our_prior) == 2 and len(our_decoder) == 2
    _same_calls(our_prior, ref_prior)
    _same_calls(our_decoder, ref_decoder)


def test_without_callback_steps_every_step_is_reported():
    _, ours = _priors()
    got, cb = _recorder()
    with pytest.warns(FutureWarning):
        ours("horse", num_inference_steps=3, height=128, width=128, generator=gen(), callback=cb)
    assert [s for s, _, _ in got] == [0, 1, 2]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(callback=3), TypeError, "callback must be callable"),
    (dict(callback=lambda *a: None, callback_steps=0), ValueError, "callback_steps must be a positive int"),
    (dict(callback=lambda *a: None, callback_steps=1.5), ValueError, "callback_steps must be a positive int"),
    (dict(callbak=lambda *a: None), TypeError, "unexpected keyword arguments \\['callbak'\\]"),
])
def test_bad_legacy_arguments(kwargs, error, match):
    _, prior = _priors()
    _, decoder = _decoders()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error, match=match):
            prior("horse", num_inference_steps=1, height=128, width=128, **kwargs)
        with pytest.raises(error, match=match):
            decoder(torch.zeros(1, 16, 6, 6), prompt="horse", num_inference_steps=1, **kwargs)


def test_combined_unknown_keyword_is_refused_before_running():
    _, ours = combined_pipes()
    with pytest.raises(TypeError, match="prior_callbak"):
        ours("horse", prior_num_inference_steps=1, num_inference_steps=1, prior_callbak=print)
