"""AudioLDMPipeline against Diffusers' AudioLDMPipeline: same weights, same inputs, same seed."""

from __future__ import annotations

import json
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
from kernel_audio import AudioLDMPipeline, AudioPipelineOutput  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
ATOL = 1e-3
FAST = dict(num_inference_steps=2, guidance_scale=6.0)


def _pipes(sched="DDIMScheduler", **kw):
    d, k = fx.audioldm_components(sched, **kw)
    ref, ours = diffusers.AudioLDMPipeline(**d), AudioLDMPipeline(**k)
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
    assert isinstance(b, np.ndarray) and b.dtype == np.float32
    diff = fx.max_diff(a, b)
    assert np.abs(a).max() > 0.05, "waveforms too close to zero to compare"
    assert diff < ATOL, diff
    return diff


def test_default_matches_diffusers(pipes):
    a, b = _both(*pipes)
    assert b.shape == (1, 256)  # sample_size 32 x VAE factor 2 mel frames x 4 samples per frame
    _check(a, b)


def test_negative_prompts_with_two_prompts(pipes):
    a, b = _both(*pipes, prompt=[fx.PROMPT, "a dog barking"], negative_prompt=["rain", "egg cracking"])
    assert b.shape == (2, 256)
    _check(a, b)
    # the negative prompt changes the result (it is used, not dropped)
    plain = pipes[1](prompt=[fx.PROMPT, "a dog barking"], **FAST, generator=fx.gen(0)).audios
    assert np.abs(plain - b).max() > 5e-3


def test_explicit_latents(pipes):
    latents = torch.randn(1, 4, 32, 4, generator=fx.gen(7))
    a, b = _both(*pipes, latents=latents)
    _check(a, b)
    c = pipes[1](prompt=fx.PROMPT, **FAST, latents=latents, generator=fx.gen(99)).audios
    np.testing.assert_array_equal(b, c)  # the latents, not the generator, set the start


def test_odd_length_is_padded_and_cropped(pipes):
    # 0.01725 s = 69 mel frames of 0.25 ms: padded to 70 for the VAE, cut back to 276 samples
    a, b = _both(*pipes, audio_length_in_s=0.01725)
    assert b.shape == (1, 276) and a.shape == b.shape
    _check(a, b)


@pytest.mark.parametrize("sched", ["PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler"])
def test_scheduler_swap(sched):
    ref, ours = _pipes()
    extra = {"skip_prk_steps": True} if sched == "PNDMScheduler" else {}
    d = getattr(diffusers, sched).from_config(ref.scheduler.config, **extra)
    ref.scheduler, ours.scheduler = d, kernel.component(sched).from_config(dict(d.config))
    a, b = _both(ref, ours)
    _check(a, b)


def test_several_waveforms_per_prompt(pipes):
    a, b = _both(*pipes, prompt=[fx.PROMPT, "a dog barking"], num_waveforms_per_prompt=2)
    assert b.shape == (4, 256)
    _check(a, b)


def test_guidance_off_and_eta(pipes):
    a, b = _both(*pipes, guidance_scale=1.0, eta=0.5)
    _check(a, b)


def test_prompt_embeds_equal_prompts(pipes):
    ours = pipes[1]
    prompts, negatives = [fx.PROMPT, "a dog barking"], ["rain", "wind"]
    from_text = ours(prompt=prompts, negative_prompt=negatives, **FAST, generator=fx.gen(0)).audios
    pos = ours._text_embeds(prompts, "cpu")
    neg = ours._text_embeds(negatives, "cpu")
    from_embeds = ours(prompt_embeds=pos, negative_prompt_embeds=neg, **FAST, generator=fx.gen(0)).audios
    np.testing.assert_allclose(from_embeds, from_text, atol=1e-6)
    assert torch.allclose(pos.norm(dim=-1), torch.ones(2))  # CLAP embeddings are unit vectors


def test_output_types_and_tuple(pipes):
    ours = pipes[1]
    pt = ours(prompt=fx.PROMPT, **FAST, generator=fx.gen(0), output_type="pt").audios
    np_ = ours(prompt=fx.PROMPT, **FAST, generator=fx.gen(0)).audios
    assert isinstance(pt, torch.Tensor) and pt.dtype == torch.float32
    np.testing.assert_array_equal(pt.numpy(), np_)
    latent = ours(prompt=fx.PROMPT, **FAST, generator=fx.gen(0), output_type="latent").audios
    assert latent.shape == (1, 4, 32, 4)
    out = ours(prompt=fx.PROMPT, **FAST, generator=fx.gen(0), return_dict=False)
    assert isinstance(out, tuple) and np.array_equal(out[0], np_)
    assert isinstance(ours(prompt=fx.PROMPT, **FAST, generator=fx.gen(0)), AudioPipelineOutput)


def test_callbacks(pipes):
    ref, ours = pipes
    seen_ref, seen_ours = [], []
    ref(prompt=fx.PROMPT, num_inference_steps=3, generator=fx.gen(0),
        callback=lambda i, t, x: seen_ref.append((i, int(t), x.shape)))
    ours(prompt=fx.PROMPT, num_inference_steps=3, generator=fx.gen(0),
         callback=lambda i, t, x: seen_ours.append((i, int(t), x.shape)))
    assert seen_ours == seen_ref and len(seen_ours) == 3
    names = []

    def on_end(pipe, i, t, tensors):
        names.append(sorted(tensors))
        assert tensors["prompt_embeds"].shape == (2, 32)  # [negative; positive] while guidance batches them
        return {"latents": tensors["latents"] * 0}

    zeroed = ours(prompt=fx.PROMPT, num_inference_steps=2, generator=fx.gen(0), callback_on_step_end=on_end,
                  callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], output_type="latent").audios
    assert names == [["latents", "prompt_embeds"]] * 2
    assert torch.count_nonzero(zeroed) == 0


# ---------------------------------------------------------------- folders
def test_diffusers_folder_loads_here_and_ours_loads_in_diffusers(pipes, tmp_path):
    ref, _ = pipes
    ref.save_pretrained(tmp_path / "theirs")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "theirs")
    assert type(loaded) is AudioLDMPipeline
    assert type(loaded.unet).__module__.startswith("kernel_unet") and type(loaded.vae).__module__.startswith("kernel_")
    loaded.set_progress_bar_config(disable=True)
    a, b = _both(ref, loaded)
    _check(a, b)

    loaded.save_pretrained(tmp_path / "ours")
    index = json.loads((tmp_path / "ours" / "model_index.json").read_text())
    assert index["_class_name"] == "AudioLDMPipeline"
    assert index["vocoder"] == ["transformers", "SpeechT5HifiGan"] and index["unet"] == ["diffusers", "UNet2DConditionModel"]
    back = diffusers.AudioLDMPipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    a2, b2 = _both(back, loaded)
    _check(a2, b2)
    assert kernel.load("audioldm", tmp_path / "ours").__class__ is AudioLDMPipeline


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(audio_length_in_s=0.0004), r"audio_length_in_s=0.0004 is shorter than .* 0.0005 s"),
    (dict(audio_length_in_s=-1.0), "audio_length_in_s"),
    (dict(audio_length_in_s="5"), "audio_length_in_s must be a number"),
    (dict(num_waveforms_per_prompt=0), "num_waveforms_per_prompt must be a positive int"),
    (dict(num_waveforms_per_prompt=1.5), "num_waveforms_per_prompt must be a positive int"),
    (dict(output_type="pil"), "output_type='pil'"),
    (dict(callback_steps=0), "callback_steps"),
    (dict(prompt_embeds=torch.zeros(1, 32)), "either prompt or prompt_embeds"),
    (dict(prompt=[fx.PROMPT] * 2, negative_prompt=["a"] * 3), "3 entries for 2 prompts"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 4, 32)), r"\(batch, projection_dim\)"),
    (dict(generator=[torch.Generator()] * 3), "generator"),
    (dict(latents=torch.zeros(1, 4, 16, 4)), r"latents must have shape \(1, 4, 32, 4\)"),
])
def test_bad_call_arguments(pipes, kwargs, match):
    args = {"prompt": fx.PROMPT, **FAST, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipes[1](**args)


def test_negative_prompt_type_is_checked(pipes):
    with pytest.raises(TypeError, match="negative_prompt must be a str or a list of str"):
        pipes[1](prompt=fx.PROMPT, negative_prompt=3, **FAST)


def test_vocoder_that_does_not_match_is_refused():
    _, ours = _pipes(vocoder_over=dict(model_in_dim=9))
    with pytest.raises(ValueError, match=r"9 mel bins .* factor 2"):
        ours(prompt=fx.PROMPT, **FAST)
    _, ours = _pipes()
    ours.vocoder.config.sampling_rate = 0  # a config that cannot time a waveform
    with pytest.raises(ValueError, match="vocoder.config.sampling_rate must be a positive int"):
        ours(prompt=fx.PROMPT, **FAST)


def test_wider_vocoder_widens_the_latents():
    # Diffusers' own check: the latent width follows the vocoder's mel bins; the waveform length does not change
    _, ours = _pipes(vocoder_over=dict(model_in_dim=16))
    out = ours(prompt=fx.PROMPT, **FAST, generator=fx.gen(0), output_type="latent").audios
    assert out.shape == (1, 4, 32, 8)
    assert ours(prompt=fx.PROMPT, **FAST, generator=fx.gen(0)).audios.shape == (1, 256)
