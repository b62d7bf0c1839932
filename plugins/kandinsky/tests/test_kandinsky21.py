"""Kandinsky 2.1 against Diffusers (the oracle): MultilingualCLIP, KandinskyPriorPipeline and KandinskyPipeline
over the same weights; folders both ways; bad input."""

from __future__ import annotations

import json

import pytest
import torch

import diffusers
import kernel
from kernel_kandinsky.kandinsky21 import KandinskyPipeline, KandinskyPriorPipeline
from kernel_kandinsky.multilingual_clip import MCLIPConfig, MultilingualCLIP

from kandinsky21_fixtures import decoder21_pipes, mclip, prior21_pipes, xlmr_tokenizer
from kandinsky_fixtures import EMBED, embeds, gen, max_diff

STEPS = 3
TOL = 1e-3
SIZE = dict(height=32, width=32)


# ------------------------------------------------------------------ MultilingualCLIP
def _tokens(texts):
    return xlmr_tokenizer()(texts, padding="max_length", max_length=77, return_tensors="pt")


@torch.no_grad()
def test_multilingual_clip_matches_diffusers():
    ref, ours = mclip()
    inp = _tokens(["a red cat", "the green house of a dog", ""])
    a, b = ref(inp.input_ids, inp.attention_mask), ours(inp.input_ids, inp.attention_mask)
    assert b[0].shape == (3, EMBED) and b[1].shape == (3, 77, EMBED)
    assert max_diff(a[0], b[0]) < 1e-5 and max_diff(a[1], b[1]) < 1e-5
    assert float(b[0].std()) > 0.01
    # The padding is excluded from the pooled embedding: a different pad length gives the same projection.
    short = xlmr_tokenizer()(["a red cat"], padding="max_length", max_length=12, return_tensors="pt")
    assert max_diff(ours(short.input_ids, short.attention_mask)[0], b[0][:1]) < 1e-5


@torch.no_grad()
def test_multilingual_clip_folders_both_ways(tmp_path):
    from diffusers.pipelines.kandinsky.text_encoder import MultilingualCLIP as Ref

    ref, ours = mclip()
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["model_type"] == "M-CLIP" and config["numDims"] == EMBED and config["transformerDimensions"] == EMBED
    back, mine = Ref.from_pretrained(tmp_path / "ours").eval(), MultilingualCLIP.from_pretrained(tmp_path / "theirs")
    inp = _tokens(["a red cat"])
    want = ours(inp.input_ids, inp.attention_mask)[0]
    assert max_diff(back(inp.input_ids, inp.attention_mask)[0], want) < 1e-6
    assert max_diff(mine.eval()(inp.input_ids, inp.attention_mask)[0], want) < 1e-6


def test_multilingual_clip_bad_input():
    with pytest.raises(ValueError, match="transformerDimensions"):
        MultilingualCLIP(MCLIPConfig(transformerDimSize=16, imageDimSize=8, hidden_size=32, num_attention_heads=4,
                                     num_hidden_layers=1, intermediate_size=8, vocab_size=48))
    _, ours = mclip()
    with pytest.raises(ValueError, match="attention_mask"):
        ours(torch.zeros(1, 5, dtype=torch.long), None)


# ------------------------------------------------------------------ prior
@pytest.fixture(scope="module")
def priors():
    return prior21_pipes()


PRIOR_CASES = {
    "default": dict(prompt="a red cat"),
    "negative_prompt": dict(prompt="a red cat", negative_prompt="blurry"),
    "batch": dict(prompt=["a red cat", "a dog"], num_images_per_prompt=2),
    "guidance_off": dict(prompt="a red cat", guidance_scale=1.0),
    "latents": dict(prompt="a red cat", latents=torch.randn(1, EMBED, generator=torch.Generator().manual_seed(5))),
    "numpy": dict(prompt="a red cat", output_type="np"),
}


@pytest.mark.parametrize("case", list(PRIOR_CASES))
def test_prior_matches_diffusers(priors, case):
    ref, ours = priors
    a = ref(**PRIOR_CASES[case], generator=gen(3), num_inference_steps=STEPS)
    b = ours(**PRIOR_CASES[case], generator=gen(3), num_inference_steps=STEPS)
    assert max_diff(a.image_embeds, b.image_embeds) < TOL
    assert max_diff(a.negative_image_embeds, b.negative_image_embeds) < TOL
    assert float(torch.as_tensor(b.image_embeds).std()) > 0.05


def test_prior_interpolate_matches_diffusers(priors):
    ref, ours = priors
    image = torch.rand(1, 3, 32, 32, generator=gen(4))
    kwargs = dict(images_and_prompts=["a cat", image], weights=[0.3, 0.7], num_inference_steps=STEPS)
    a, b = ref.interpolate(**kwargs, generator=gen(6)), ours.interpolate(**kwargs, generator=gen(6))
    assert max_diff(a.image_embeds, b.image_embeds) < TOL
    assert max_diff(a.negative_image_embeds, b.negative_image_embeds) < TOL
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        ours.interpolate(**kwargs, num_images_per_prompt=2)


def test_prior_folders_both_ways(priors, tmp_path):
    ref, ours = priors
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    back = diffusers.KandinskyPriorPipeline.from_pretrained(tmp_path / "ours")
    mine = kernel.load(str(tmp_path / "theirs"))
    assert type(mine) is KandinskyPriorPipeline
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    a = back("a cat", generator=gen(), num_inference_steps=STEPS).image_embeds
    b = mine("a cat", generator=gen(), num_inference_steps=STEPS).image_embeds
    assert max_diff(a, b) < TOL and max_diff(b, ours("a cat", generator=gen(), num_inference_steps=STEPS)[0]) < TOL


def test_prior_call_is_2_1s(priors):
    _, ours = priors
    with pytest.raises(TypeError, match="callback_on_step_end"):
        ours("a", callback_on_step_end=lambda *a: {})
    with pytest.raises(ValueError, match="output_type"):
        ours("a", output_type="pil", num_inference_steps=STEPS)


# ------------------------------------------------------------------ decoder
@pytest.fixture(scope="module")
def decoders():
    return decoder21_pipes()


def _latents(batch):
    return torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(9))


DECODER_CASES = {
    "default": dict(prompt="a red cat"),
    "negative_prompt": dict(prompt="a red cat", negative_prompt="blurry low"),
    "batch": dict(prompt=["a red cat", "the green house"], batch=2),
    "batch_negative": dict(prompt=["a red cat", "a dog"], negative_prompt=["bad", "low"], batch=2),
    "num_images_per_prompt": dict(prompt=["a red cat", "a dog"], batch=2, num_images_per_prompt=2),
    "latents": dict(prompt="a red cat", latents=_latents(1)),
    "guidance_off": dict(prompt="a red cat", guidance_scale=1.0),
    "pt_output": dict(prompt="a red cat", output_type="pt"),
}


def _decode(pipe, prompt, batch=1, output_type="np", **kwargs):
    pos, neg = embeds(batch)
    return pipe(prompt, pos, neg, **SIZE, num_inference_steps=STEPS, generator=gen(), output_type=output_type,
                **kwargs).images


@pytest.mark.parametrize("case", list(DECODER_CASES))
def test_decoder_matches_diffusers(decoders, case):
    ref, ours = decoders
    a, b = _decode(ref, **DECODER_CASES[case]), _decode(ours, **DECODER_CASES[case])
    assert b.shape == a.shape and max_diff(a, b) < TOL
    assert float(torch.as_tensor(b).std()) > 0.01


def test_decoder_reads_the_prompt(decoders):
    _, ours = decoders
    assert max_diff(_decode(ours, "a red cat"), _decode(ours, "the green house")) > 1e-3


def test_decoder_learned_variance_and_ddpm_match_diffusers():
    ref, ours = decoder21_pipes(scheduler="DDPMScheduler", variance_type="learned_range")
    a, b = _decode(ref, ["a cat", "a dog"], batch=2), _decode(ours, ["a cat", "a dog"], batch=2)
    assert max_diff(a, b) < TOL


def test_decoder_legacy_callback_matches_diffusers(decoders):
    ref, ours = decoders
    seen = {"ref": [], "ours": []}
    a = _decode(ref, "a cat", callback=lambda i, t, x: seen["ref"].append(x.clone()), callback_steps=2)
    b = _decode(ours, "a cat", callback=lambda i, t, x: seen["ours"].append(x.clone()), callback_steps=2)
    assert max_diff(a, b) < TOL and len(seen["ours"]) == len(seen["ref"]) == 2
    assert all(max_diff(x, y) < TOL for x, y in zip(seen["ref"], seen["ours"]))


def test_decoder_folders_both_ways(decoders, tmp_path):
    ref, ours = decoders
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    index = json.loads((tmp_path / "ours" / "model_index.json").read_text())
    assert index["text_encoder"] == ["kandinsky", "MultilingualCLIP"]
    back = diffusers.KandinskyPipeline.from_pretrained(tmp_path / "ours")
    mine = kernel.load(str(tmp_path / "theirs"))
    assert type(mine) is KandinskyPipeline and isinstance(mine.text_encoder, MultilingualCLIP)
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    assert max_diff(_decode(back, "a cat"), _decode(mine, "a cat")) < TOL
    assert max_diff(_decode(mine, "a cat"), _decode(ours, "a cat")) < TOL


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(prompt=3), ValueError, "prompt must be a str"),
    (dict(prompt=["a", "b"]), ValueError, "one image embedding per prompt"),
    (dict(negative_prompt=4), ValueError, "negative_prompt must be a str"),
    (dict(prompt=["a"], negative_prompt=["b", "c"]), ValueError, "one negative prompt per prompt"),
    (dict(image_embeds=torch.zeros(1, EMBED + 1)), ValueError, "image_embeds has width 33"),
    (dict(image_embeds="cat"), TypeError, "image_embeds must be a torch.Tensor"),
    (dict(negative_image_embeds=None), ValueError, "negative_image_embeds is required while guidance is on"),
    (dict(height=30), ValueError, "height must be a positive multiple of 4"),
    (dict(latents=torch.zeros(1, 4, 8, 8)), ValueError, "latents must have shape"),
    (dict(output_type="latent"), ValueError, "output_type"),
])
def test_decoder_bad_input_is_a_clear_error(decoders, kwargs, error, match):
    _, ours = decoders
    pos, neg = embeds(1)
    args = dict(prompt="a cat", image_embeds=pos, negative_image_embeds=neg, **SIZE, num_inference_steps=STEPS)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ours(**args)
