"""StableAudioPipeline against Diffusers' StableAudioPipeline: same weights, same inputs, same seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sa_fixtures import pipelines  # noqa: E402

ATOL = 1e-3


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pair():
    return pipelines()


def _run(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", 3)
    seed = kwargs.pop("seed", 0)
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).audios


def _compare(pair, **kwargs):
    ours, theirs = pair
    a, b = _run(ours, **kwargs), _run(theirs, **kwargs)
    a, b = (torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x for x in (a, b))
    assert a.shape == b.shape
    diff = (a - b).abs().max().item()
    assert diff < ATOL, diff
    return a, diff


def test_default_call_matches_diffusers(pair):
    audio, _ = _compare(pair, prompt="a cat")
    assert isinstance(audio, torch.Tensor) and audio.shape == (1, 2, 64)  # the model's whole window: 16 x 4 samples
    assert audio.abs().max() > 1e-3
    assert pair[0].sampling_rate == 64 and pair[0].max_audio_length_in_s == 1.0


def test_negative_prompts_and_two_waveforms_per_prompt_match_diffusers(pair):
    audio, _ = _compare(pair, prompt=["a cat", "the dog"], negative_prompt=["a dog", "photo"],
                        num_waveforms_per_prompt=2, guidance_scale=4.0)
    assert audio.shape == (4, 2, 64)
    assert (audio[0] - audio[1]).abs().max() > 1e-4  # each waveform has its own noise


def test_latents_odd_length_and_numpy_match_diffusers(pair):
    latents = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(5))
    audio, _ = _compare(pair, prompt="the dog", latents=latents, audio_start_in_s=0.1, audio_end_in_s=0.7,
                        output_type="np")
    # int(0.7 * 64) - int(0.1 * 64) = 44 - 6 samples
    assert audio.shape == (1, 2, 38)
    ours = _run(pair[0], prompt="the dog", latents=latents, audio_start_in_s=0.1, audio_end_in_s=0.7, output_type="np")
    assert isinstance(ours, np.ndarray)


def test_no_guidance_and_latent_output_match_diffusers(pair):
    _compare(pair, prompt="a photo", guidance_scale=1.0)
    latents, _ = _compare(pair, prompt="a photo", output_type="latent")
    assert latents.shape == (1, 4, 16)


def test_initial_audio_matches_diffusers(pair):
    waveform = torch.randn(1, 2, 50, generator=torch.Generator().manual_seed(3)) * 0.3  # padded to 64 samples
    _compare(pair, prompt="a cat", initial_audio_waveforms=waveform, initial_audio_sampling_rate=64)
    mono = torch.randn(1, 80, generator=torch.Generator().manual_seed(4)) * 0.3  # cut to 64, repeated to stereo
    _compare(pair, prompt="a cat", initial_audio_waveforms=mono, initial_audio_sampling_rate=64)


def test_scheduler_step_callback_and_legacy_callback(pair):
    ours, _ = pair
    seen, legacy = [], []

    def on_step(pipe, i, t, tensors):
        seen.append(tensors["text_audio_duration_embeds"].shape[0])
        return {}

    _run(ours, prompt="a cat", callback_on_step_end=on_step,
         callback_on_step_end_tensor_inputs=["latents", "text_audio_duration_embeds"],
         callback=lambda i, t, x: legacy.append(i))
    assert seen == [2, 2, 2]  # [negative; positive] while guided
    assert legacy == [0, 1, 2]


def test_folders_both_ways(pair, tmp_path):
    from diffusers import StableAudioPipeline as Theirs

    import kernel

    ours, theirs = pair
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    index = json.loads((tmp_path / "ours" / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "StableAudioDiTModel"]
    want = _run(theirs, prompt="a cat")
    loaded_there = Theirs.from_pretrained(tmp_path / "ours")
    loaded_there.set_progress_bar_config(disable=True)
    assert (_run(loaded_there, prompt="a cat") - want).abs().max() < ATOL
    loaded_here = kernel.load("stable-audio", tmp_path / "theirs")
    loaded_here.set_progress_bar_config(disable=True)
    assert type(loaded_here).__name__ == "StableAudioPipeline"
    assert (_run(loaded_here, prompt="a cat") - want).abs().max() < ATOL
    from kernel.pipeline import DiffusionPipeline

    assert type(DiffusionPipeline.from_pretrained(tmp_path / "theirs")).__name__ == "StableAudioPipeline"


def test_edm_dpmsolver_scheduler_matches_diffusers():
    from diffusers import EDMDPMSolverMultistepScheduler as TheirScheduler

    import kernel

    ours, theirs = pipelines(3)
    config = dict(sigma_min=0.3, sigma_max=500, sigma_data=1.0, prediction_type="v_prediction")
    ours.scheduler = kernel.component("EDMDPMSolverMultistepScheduler")(**config)
    theirs.scheduler = TheirScheduler(**config)
    _compare((ours, theirs), prompt="the dog", num_inference_steps=4)


@pytest.mark.parametrize("kwargs, match", [
    ({"audio_end_in_s": 1.5}, "maximum"),
    ({"audio_start_in_s": 0.5, "audio_end_in_s": 0.5}, "greater than audio_start_in_s"),
    ({"audio_start_in_s": 0.6, "audio_end_in_s": 0.2}, "greater than audio_start_in_s"),
    ({"audio_start_in_s": -0.5, "audio_end_in_s": 0.2}, "min_value"),
    ({"audio_end_in_s": float("nan")}, "number of seconds"),
    ({"num_waveforms_per_prompt": 0}, "num_waveforms_per_prompt"),
    ({"num_waveforms_per_prompt": 1.5}, "num_waveforms_per_prompt"),
    ({"output_type": "pil"}, "output_type"),
    ({"callback_steps": 0}, "callback_steps"),
    ({"latents": torch.zeros(1, 4, 15)}, "latents"),
    ({"initial_audio_waveforms": torch.zeros(1, 2, 64)}, "initial_audio_sampling_rate"),
    ({"initial_audio_waveforms": torch.zeros(1, 2, 64), "initial_audio_sampling_rate": 44100}, "64 Hz"),
    ({"initial_audio_waveforms": torch.zeros(3, 2, 64), "initial_audio_sampling_rate": 64}, "one waveform per prompt"),
    ({"negative_prompt": ["a", "b"]}, "negative_prompt"),
    ({"prompt_embeds": torch.zeros(1, 12, 24)}, "prompt or prompt_embeds"),
])
def test_bad_input_is_a_clear_error(pair, kwargs, match):
    kwargs = {"prompt": "a cat", "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        pair[0](**kwargs)


def test_prompt_embeds_match_prompt(pair):
    ours, _ = pair
    batch = ours.tokenizer(["a cat"], padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    embeds = ours.text_encoder(batch.input_ids, attention_mask=batch.attention_mask)[0]
    a = _run(ours, prompt="a cat", negative_prompt="the dog")
    nb = ours.tokenizer(["the dog"], padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    neg = ours.text_encoder(nb.input_ids, attention_mask=nb.attention_mask)[0]
    b = _run(ours, prompt_embeds=embeds, attention_mask=batch.attention_mask, negative_prompt_embeds=neg,
             negative_attention_mask=nb.attention_mask)
    assert (a - b).abs().max() < 1e-5
