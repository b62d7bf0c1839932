"""MusicLDMPipeline against Diffusers' MusicLDMPipeline, CLAP ranking included."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import audio_fixtures as fx  # noqa: E402
from audio_fixtures import single_thread  # noqa: E402,F401

import diffusers  # noqa: E402
import kernel  # noqa: E402
from kernel.pipeline import DiffusionPipeline  # noqa: E402
from kernel_audio import MusicLDMPipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
ATOL = 1e-3
FAST = dict(num_inference_steps=2, guidance_scale=6.0)
TWO = [fx.PROMPT, "a dog barking"]


def _pipes(sched="DDIMScheduler", fe_rate=16000):
    d, k = fx.musicldm_components(sched, fe_rate)
    ref, ours = diffusers.MusicLDMPipeline(**d), MusicLDMPipeline(**k)
    ref.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(disable=True)
    return ref, ours


@pytest.fixture(scope="module")
def pipes():
    return _pipes()


def _both(ref, ours, seed=0, **kw):
    args = {"prompt": fx.PROMPT, **FAST, **kw}
    return ref(**args, generator=fx.gen(seed)).audios, ours(**args, generator=fx.gen(seed)).audios


def _check(a, b):
    assert np.abs(a).max() > 0.05, "waveforms too close to zero to compare"
    diff = fx.max_diff(a, b)
    assert diff < ATOL, diff


def test_default_matches_diffusers(pipes):
    a, b = _both(*pipes)
    assert b.shape == (1, 256)
    _check(a, b)


def test_negative_prompts_with_two_prompts(pipes):
    a, b = _both(*pipes, prompt=TWO, negative_prompt=["rain", "egg cracking"])
    assert b.shape == (2, 256)
    _check(a, b)


def test_explicit_latents_and_odd_length(pipes):
    latents = torch.randn(1, 4, 67, 4, generator=fx.gen(3))
    # 0.03325 s = 133 mel frames, padded to 134 (the 67 latent rows), cut back to 532 samples
    a, b = _both(*pipes, latents=latents, audio_length_in_s=0.03325)
    assert b.shape == (1, 532)
    _check(a, b)


def test_scheduler_swap():
    ref, ours = _pipes()
    d = diffusers.EulerAncestralDiscreteScheduler.from_config(ref.scheduler.config)
    ref.scheduler, ours.scheduler = d, kernel.component("EulerAncestralDiscreteScheduler").from_config(dict(d.config))
    a, b = _both(ref, ours)
    _check(a, b)


def test_several_waveforms_are_ranked_as_diffusers(pipes):
    ref, ours = pipes
    a, b = _both(ref, ours, prompt=TWO, num_waveforms_per_prompt=2)
    assert b.shape == (4, 256)
    _check(a, b)
    # without a feature extractor nothing is ranked: the rows come in generation order
    plain = MusicLDMPipeline(**{**ours.components, "feature_extractor": None})
    plain.set_progress_bar_config(disable=True)
    unranked = plain(prompt=TWO, **FAST, num_waveforms_per_prompt=2, generator=fx.gen(0)).audios
    order = [int(np.argmin(np.abs(unranked - row).max(axis=1))) for row in b]
    assert all(np.abs(unranked[j] - row).max() < 1e-6 for j, row in zip(order, b))
    assert order != [0, 1, 2, 3], "the ranking kept the generation order; the test shows nothing"


def test_ranking_resamples_for_the_feature_extractor():
    # CLAP's feature extractor runs at 48 kHz here; the 16 kHz waveforms are resampled first, as Diffusers does
    a, b = _both(*_pipes(fe_rate=48000), num_waveforms_per_prompt=3)
    assert b.shape == (3, 256)
    _check(a, b)


def test_resample_matches_librosa():
    import librosa

    from kernel_audio.ranking import resample

    x = np.random.default_rng(0).standard_normal((2, 301)).astype(np.float32)
    for target in (48000, 8000, 16000):
        ours, theirs = resample(x, 16000, target), librosa.resample(x, orig_sr=16000, target_sr=target)
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_folders_both_ways(pipes, tmp_path):
    ref, ours = pipes
    # saved with the plain ClapModel (the transformers 4 shim is for running Diffusers' oracle only)
    diffusers.MusicLDMPipeline(**{**ref.components, "text_encoder": ours.text_encoder}).save_pretrained(tmp_path / "theirs")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "theirs")
    assert type(loaded) is MusicLDMPipeline and type(loaded.feature_extractor).__name__ == "ClapFeatureExtractor"
    loaded.set_progress_bar_config(disable=True)
    loaded.save_pretrained(tmp_path / "ours")
    back = diffusers.MusicLDMPipeline.from_pretrained(tmp_path / "ours")
    back.text_encoder = fx.transformers4_clap(back.text_encoder)
    back.set_progress_bar_config(disable=True)
    a, b = _both(back, loaded, num_waveforms_per_prompt=2)
    _check(a, b)


@pytest.mark.parametrize("kwargs, match", [
    (dict(audio_length_in_s=0.0001), "shorter than the shortest audio"),
    (dict(num_waveforms_per_prompt=0), "num_waveforms_per_prompt must be a positive int"),
    (dict(output_type="pil"), "output_type"),
])
def test_bad_call_arguments(pipes, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipes[1](**{"prompt": fx.PROMPT, **FAST, **kwargs})
