"""AudioLDM 2 against Diffusers: the projection model and UNet (same weights, 1e-5), folders both ways,
and AudioLDM2Pipeline (same components, same seed, 1e-3)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import aldm2_fixtures as af  # noqa: E402
import audio_fixtures as fx  # noqa: E402
from audio_fixtures import single_thread  # noqa: E402,F401

import diffusers  # noqa: E402
from diffusers.pipelines.audioldm2.modeling_audioldm2 import (  # noqa: E402
    AudioLDM2ProjectionModel as DiffusersProjection,
    AudioLDM2UNet2DConditionModel as DiffusersUNet,
)
from kernel_audio import (  # noqa: E402
    AudioLDM2Pipeline,
    AudioLDM2ProjectionModel,
    AudioLDM2UNet2DConditionModel,
    AudioPipelineOutput,
)

pytestmark = pytest.mark.usefixtures("single_thread")
MODEL_ATOL, ATOL = 1e-5, 1e-3
FAST = dict(num_inference_steps=2, guidance_scale=6.0)


# ---------------------------------------------------------------------------------------- models
def _unet_inputs(batch=2, height=12, width=6, seed=0):
    g = fx.gen(seed)
    mask = torch.ones(batch, 7, dtype=torch.long)
    mask[0, 5:] = 0
    return dict(sample=torch.randn(batch, 4, height, width, generator=g),
                encoder_hidden_states=torch.randn(batch, 5, 16, generator=g),
                encoder_hidden_states_1=torch.randn(batch, 7, 32, generator=g), encoder_attention_mask_1=mask)


@pytest.mark.parametrize("case", ["masked", "no_mask", "one_context", "odd_size", "per_item_timesteps"])
def test_unet_matches_diffusers(case):
    d, k = af.unet()
    kw = _unet_inputs(height=11 if case == "odd_size" else 12, width=5 if case == "odd_size" else 6)
    t = torch.tensor([3, 700]) if case == "per_item_timesteps" else 10
    if case in ("no_mask", "one_context"):
        kw.pop("encoder_attention_mask_1")
    if case == "one_context":  # without a second context, slots 2-3 read the first (16-wide, so only slot 1 kept)
        d, k = af.unet(cross_attention_dim=([None, 16], [None, 16]))
        kw.pop("encoder_hidden_states_1")
    with torch.no_grad():
        a, b = d(timestep=t, **kw).sample, k(timestep=t, **kw).sample
    assert b.shape == kw["sample"].shape
    assert a.abs().max() > 0.1
    assert fx.max_diff(a, b) < MODEL_ATOL


def test_unet_mask_is_read():
    _, k = af.unet()
    kw = _unet_inputs()
    with torch.no_grad():
        masked = k(timestep=10, **kw).sample
        kw.pop("encoder_attention_mask_1")
        plain = k(timestep=10, **kw).sample
    assert (masked[0] - plain[0]).abs().max() > 1e-4  # item 0 has masked tokens
    assert (masked[1] - plain[1]).abs().max() < 1e-6  # item 1 has none


def test_unet_class_embedding_and_layers():
    over = dict(class_embed_type="simple_projection", projection_class_embeddings_input_dim=8,
                class_embeddings_concat=True, transformer_layers_per_block=2, use_linear_projection=True)
    d, k = af.unet(**over)
    kw = _unet_inputs()
    labels = torch.randn(2, 8, generator=fx.gen(3))
    with torch.no_grad():
        assert fx.max_diff(d(timestep=5, class_labels=labels, **kw).sample,
                           k(timestep=5, class_labels=labels, **kw).sample) < MODEL_ATOL
        with pytest.raises(ValueError, match="class_labels"):
            k(timestep=5, **kw)


@pytest.mark.parametrize("bad, match", [
    (dict(down_block_types=("DownBlock2D", "AttnDownBlock2D")), "down block type"),
    (dict(up_block_types=("CrossAttnUpBlock2D", "UpDecoderBlock2D")), "up block type"),
    (dict(mid_block_type="UNetMidBlock2D"), "mid_block_type"),
    (dict(num_attention_heads=2), "num_attention_heads"),
    (dict(block_out_channels=(8, 16, 16)), "same length"),
    (dict(cross_attention_dim=([None, 16], [None, 16, 32, 32, 32])), "at most 4"),
    (dict(layers_per_block=(1, 1, 1)), "layers_per_block"),
    (dict(class_embed_type="bogus"), "class_embed_type"),
    (dict(time_embedding_type="fourier"), "time_embedding_type"),
])
def test_unet_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        AudioLDM2UNet2DConditionModel(**{**af.UNET, **bad})


@pytest.mark.parametrize("masks", ["both", "second_only", "none"])
def test_projection_matches_diffusers(masks):
    d, k = af.projection()
    g = fx.gen(1)
    h, h1 = torch.randn(2, 1, 32, generator=g), torch.randn(2, 6, 32, generator=g)
    m1 = torch.ones(2, 6, dtype=torch.long)
    m1[1, 3:] = 0
    kw = dict(hidden_states=h, hidden_states_1=h1)
    if masks == "both":
        kw.update(attention_mask=torch.ones(2, 1, dtype=torch.long), attention_mask_1=m1)
    with torch.no_grad():
        b = k(**kw)
        if masks == "second_only":  # Diffusers' own one-mask path fails (it builds ones from a tensor slice)
            kw["attention_mask_1"] = m1
            b = k(**kw)
            assert b.attention_mask.shape == (2, 1 + 2 + 6 + 2) and b.attention_mask[:, :3].eq(1).all()
            assert b.attention_mask[1, 7:10].eq(0).all() and b.attention_mask[1, 10] == 1  # T5 padding; eos kept
            return
        a = d(**kw)
    assert b.hidden_states.shape == (2, 1 + 2 + 6 + 2, 16)
    assert fx.max_diff(a.hidden_states, b.hidden_states) < MODEL_ATOL
    if masks == "none":
        assert a.attention_mask is None and b.attention_mask is None
    else:
        assert torch.equal(a.attention_mask, b.attention_mask)


def test_projection_learned_positions_and_errors():
    d, k = af.projection(use_learned_position_embedding=True, max_seq_length=6)
    h, h1 = torch.randn(2, 1, 32), torch.randn(2, 6, 32)
    with torch.no_grad():
        assert fx.max_diff(d(h, h1).hidden_states, k(h, h1).hidden_states) < MODEL_ATOL
    with pytest.raises(ValueError, match="hidden_states_1"):
        k(hidden_states=h)
    with pytest.raises(ValueError, match="max_seq_length"):
        AudioLDM2ProjectionModel(**af.PROJECTION, use_learned_position_embedding=True)


def test_model_folders_load_both_ways(tmp_path):
    du, ku = af.unet()
    dp, kp = af.projection()
    ku.save_pretrained(tmp_path / "ours_unet")
    kp.save_pretrained(tmp_path / "ours_proj")
    du.save_pretrained(tmp_path / "theirs_unet")
    dp.save_pretrained(tmp_path / "theirs_proj")
    kw = _unet_inputs()
    g = fx.gen(2)
    h, h1 = torch.randn(2, 1, 32, generator=g), torch.randn(2, 4, 32, generator=g)
    with torch.no_grad():
        ref_u, ref_p = du(timestep=7, **kw).sample, dp(hidden_states=h, hidden_states_1=h1).hidden_states
        for unet in (DiffusersUNet.from_pretrained(tmp_path / "ours_unet"),
                     AudioLDM2UNet2DConditionModel.from_pretrained(tmp_path / "theirs_unet")):
            assert fx.max_diff(ref_u, unet(timestep=7, **kw).sample) < MODEL_ATOL
        for proj in (DiffusersProjection.from_pretrained(tmp_path / "ours_proj"),
                     AudioLDM2ProjectionModel.from_pretrained(tmp_path / "theirs_proj")):
            assert fx.max_diff(ref_p, proj(hidden_states=h, hidden_states_1=h1).hidden_states) < MODEL_ATOL


# ---------------------------------------------------------------------------------------- pipeline
def _pipes(**kw):
    d, k = af.components(**kw)
    ref, ours = diffusers.AudioLDM2Pipeline(**d), AudioLDM2Pipeline(**k)
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
    assert np.abs(a).max() > 0.05, "waveforms too close to zero to compare"
    diff = fx.max_diff(a, b)
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
    plain = pipes[1](prompt=[fx.PROMPT, "a dog barking"], **FAST, generator=fx.gen(0)).audios
    assert np.abs(plain - b).max() > 5e-3  # the negative prompt is used


def test_explicit_latents(pipes):
    latents = torch.randn(1, 4, 32, 4, generator=fx.gen(7))
    a, b = _both(*pipes, latents=latents)
    _check(a, b)
    c = pipes[1](prompt=fx.PROMPT, **FAST, latents=latents, generator=fx.gen(99)).audios
    np.testing.assert_array_equal(b, c)


def test_odd_length_is_padded_and_cropped(pipes):
    a, b = _both(*pipes, audio_length_in_s=0.01725)  # 69 mel frames, padded to 70, cut to 276 samples
    assert b.shape == (1, 276) and a.shape == b.shape
    _check(a, b)


def test_two_waveforms_per_prompt_are_ranked(pipes):
    a, b = _both(*pipes, num_waveforms_per_prompt=2)
    assert b.shape == (2, 256)
    _check(a, b)
    # the same waveforms as the unranked call, in CLAP order
    ref, ours = pipes
    fe = ours.feature_extractor
    ours.feature_extractor = None
    try:
        plain = ours(prompt=fx.PROMPT, **FAST, num_waveforms_per_prompt=2, generator=fx.gen(0)).audios
    finally:
        ours.feature_extractor = fe
    match = [int(np.argmin(np.abs(plain - row).max(axis=-1))) for row in b]
    assert sorted(match) == [0, 1]
    assert all(np.abs(plain[j] - row).max() < 1e-6 for j, row in zip(match, b))


def test_no_guidance_and_scheduler_swap():
    ref, ours = _pipes(sched="DPMSolverMultistepScheduler")
    a, b = _both(ref, ours, guidance_scale=1.0)
    _check(a, b)
    a, b = _both(ref, ours, num_inference_steps=3)
    _check(a, b)


def test_embeddings_and_max_new_tokens(pipes):
    ref, ours = pipes
    with torch.no_grad():
        embeds, mask, generated = ref.encode_prompt(fx.PROMPT, torch.device("cpu"), 1, True, negative_prompt="rain",
                                                    max_new_tokens=5)
    neg = (embeds[:1], mask[:1], generated[:1])
    pos = (embeds[1:], mask[1:], generated[1:])
    b = ours(prompt_embeds=pos[0], attention_mask=pos[1], generated_prompt_embeds=pos[2], negative_prompt_embeds=neg[0],
             negative_attention_mask=neg[1], negative_generated_prompt_embeds=neg[2], **FAST,
             generator=fx.gen(0)).audios
    a = ref(prompt=fx.PROMPT, negative_prompt="rain", max_new_tokens=5, **FAST, generator=fx.gen(0)).audios
    c = ours(prompt=fx.PROMPT, negative_prompt="rain", max_new_tokens=5, **FAST, generator=fx.gen(0)).audios
    _check(a, b)
    _check(a, c)
    assert generated.shape[1] == 5


def test_output_types_and_tuple(pipes):
    ours = pipes[1]
    out = ours(prompt=fx.PROMPT, **FAST, output_type="pt", generator=fx.gen(0))
    assert isinstance(out, AudioPipelineOutput) and isinstance(out.audios, torch.Tensor)
    latents = ours(prompt=fx.PROMPT, **FAST, output_type="latent", generator=fx.gen(0)).audios
    assert latents.shape == (1, 4, 32, 4)
    (audios,) = ours(prompt=fx.PROMPT, **FAST, return_dict=False, generator=fx.gen(0))
    assert audios.shape == (1, 256)


def test_callback_sees_generated_embeds(pipes):
    seen = {}

    def callback(pipe, i, t, tensors):
        seen.update({k: v.shape for k, v in tensors.items()})
        return {}

    pipes[1](prompt=fx.PROMPT, **FAST, generator=fx.gen(0), callback_on_step_end=callback,
             callback_on_step_end_tensor_inputs=["latents", "generated_prompt_embeds", "attention_mask"])
    assert seen["generated_prompt_embeds"] == (2, 8, 16)  # [negative; positive], 8 new GPT-2 states
    assert seen["attention_mask"][0] == 2 and seen["latents"] == (1, 4, 32, 4)


def test_pipeline_folder_loads_both_ways(pipes, tmp_path):
    from kernel.pipeline import DiffusionPipeline

    ref, ours = pipes
    # Saved by Diffusers with the plain GPT2Model (the generation twin is only for running Diffusers' oracle).
    diffusers.AudioLDM2Pipeline(**{**ref.components, "language_model": ours.language_model}).save_pretrained(
        tmp_path / "theirs")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "theirs")
    assert isinstance(loaded, AudioLDM2Pipeline)
    assert isinstance(loaded.unet, AudioLDM2UNet2DConditionModel)
    assert isinstance(loaded.projection_model, AudioLDM2ProjectionModel)
    loaded.set_progress_bar_config(disable=True)
    a = ours(prompt=fx.PROMPT, **FAST, generator=fx.gen(0)).audios
    _check(a, loaded(prompt=fx.PROMPT, **FAST, generator=fx.gen(0)).audios)
    ours.save_pretrained(tmp_path / "ours")
    theirs = diffusers.AudioLDM2Pipeline.from_pretrained(tmp_path / "ours", language_model=ref.language_model)
    theirs.set_progress_bar_config(disable=True)
    _check(a, theirs(prompt=fx.PROMPT, **FAST, generator=fx.gen(0)).audios)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(transcription="hello"), ValueError, "transcription"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 4, 32)), ValueError, "generated_prompt_embeds"),
    (dict(generated_prompt_embeds=torch.zeros(1, 8, 16)), ValueError, "generated_prompt_embeds"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 4, 32), generated_prompt_embeds=torch.zeros(1, 8, 16),
          negative_prompt_embeds=torch.zeros(1, 4, 32)), ValueError, "negative_generated_prompt_embeds"),
    (dict(prompt=None, prompt_embeds=torch.zeros(4, 32), generated_prompt_embeds=torch.zeros(1, 8, 16)),
     ValueError, "prompt_embeds"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 4, 32), generated_prompt_embeds=torch.zeros(1, 8, 16),
          attention_mask=torch.ones(1, 5)), ValueError, "attention_mask"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 4, 32), generated_prompt_embeds=torch.zeros(1, 8, 16),
          negative_prompt_embeds=torch.zeros(1, 4, 32), negative_generated_prompt_embeds=torch.zeros(1, 7, 16)),
     ValueError, "same shape"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 4, 32), generated_prompt_embeds=torch.zeros(1, 8, 16),
          negative_prompt_embeds=torch.zeros(1, 5, 32), negative_generated_prompt_embeds=torch.zeros(1, 8, 16)),
     ValueError, "pad the T5 states"),
    (dict(negative_prompt="a", negative_generated_prompt_embeds=torch.zeros(1, 8, 16)), ValueError,
     "negative_generated_prompt_embeds"),
    (dict(num_waveforms_per_prompt=0), ValueError, "num_waveforms_per_prompt"),
    (dict(audio_length_in_s=0.0001), ValueError, "audio_length_in_s"),
    (dict(output_type="pil"), ValueError, "output_type"),
    (dict(callback_steps=0), ValueError, "callback_steps"),
    (dict(negative_prompt=["a", "b"]), ValueError, "negative_prompt"),
    (dict(negative_prompt=3), TypeError, "negative_prompt"),
])
def test_errors(pipes, kw, exc, match):
    args = {"prompt": fx.PROMPT, **FAST, **kw}
    with pytest.raises(exc, match=match):
        pipes[1](**args)
