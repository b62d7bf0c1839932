"""kernel_clip.encode_prompt / encode_prompt_xl against Diffusers' pipelines' encode_prompt."""

from __future__ import annotations

import types

import pytest
import torch

from kernel_clip import CLIPPromptConditioner, CLIPXLPromptConditioner, PromptOptions, encode_prompt, encode_prompt_xl
from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer

D_SD = pytest.importorskip("diffusers").StableDiffusionPipeline
D_XL = pytest.importorskip("diffusers").StableDiffusionXLPipeline

LONG = "a cat sitting on the dog in the garden " * 8  # > 75 tokens with the tiny vocabulary
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sd_parts(tmp_path_factory):
    tok = tiny_clip_tokenizer(tmp_path_factory.mktemp("tok"))
    return tok, tiny_clip_text_model(tok, seed=0)


@pytest.fixture(scope="module")
def sd2_parts(tmp_path_factory):
    tok = tiny_clip_tokenizer(tmp_path_factory.mktemp("tok2"), pad_token="!")
    return tok, tiny_clip_text_model(tok, seed=1)


@pytest.fixture(scope="module")
def xl_parts(tmp_path_factory):
    tok = tiny_clip_tokenizer(tmp_path_factory.mktemp("tokxl"))
    tok2 = tiny_clip_tokenizer(tmp_path_factory.mktemp("tokxl2"), pad_token="!")
    return tok, tiny_clip_text_model(tok, seed=2), tok2, tiny_clip_text_model(tok2, seed=3, with_projection=True)


def _diffusers_sd(tok, enc, **kw):
    if enc is not None and not hasattr(enc, "text_model"):
        # Diffusers 0.42 reads ``text_encoder.text_model.final_layer_norm`` for clip_skip, which
        # transformers 5 flattened away; alias it outside the module tree for the oracle.
        object.__setattr__(enc, "text_model", enc)
    host = types.SimpleNamespace(tokenizer=tok, text_encoder=enc, unet=None)
    return D_SD.encode_prompt(host, device=CPU, **kw)


def _diffusers_xl(tok, enc, tok2, enc2, force_zeros=True, **kw):
    host = types.SimpleNamespace(
        tokenizer=tok, text_encoder=enc, tokenizer_2=tok2, text_encoder_2=enc2, unet=None,
        config=types.SimpleNamespace(force_zeros_for_empty_prompt=force_zeros),
    )
    return D_XL.encode_prompt(host, device=CPU, **kw)


def _close(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


SD_CASES = [
    dict(prompt="a cat", num_images_per_prompt=1, do_classifier_free_guidance=True),
    dict(prompt=["a cat", "the dog"], num_images_per_prompt=2, do_classifier_free_guidance=True,
         negative_prompt=["blurry", "ugly dog"]),
    dict(prompt="a cat", num_images_per_prompt=3, do_classifier_free_guidance=False),
    dict(prompt="a cat", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt="bad", clip_skip=1),
    dict(prompt="a cat", num_images_per_prompt=1, do_classifier_free_guidance=True, clip_skip=2),
    dict(prompt=LONG, num_images_per_prompt=1, do_classifier_free_guidance=True),
]


@pytest.mark.parametrize("which", ["sd1", "sd2"])
@pytest.mark.parametrize("case", range(len(SD_CASES)))
def test_sd_matches_diffusers(sd_parts, sd2_parts, which, case):
    tok, enc = sd_parts if which == "sd1" else sd2_parts
    kw = SD_CASES[case]
    ours = encode_prompt(tok, enc, device=CPU, **kw)
    ref = _diffusers_sd(tok, enc, **kw)
    _close(ours[0], ref[0])
    _close(ours[1], ref[1])


def test_sd_embeds_passthrough(sd_parts):
    tok, enc = sd_parts
    pe = torch.randn(2, 77, 32)
    ne = torch.randn(2, 77, 32)
    ours = encode_prompt(tok, enc, None, CPU, 2, True, prompt_embeds=pe, negative_prompt_embeds=ne)
    ref = _diffusers_sd(tok, enc, prompt=None, num_images_per_prompt=2, do_classifier_free_guidance=True,
                        prompt_embeds=pe, negative_prompt_embeds=ne)
    _close(ours[0], ref[0])
    _close(ours[1], ref[1])
    # only prompt_embeds: negative encoded from "" with the same length
    ours = encode_prompt(tok, enc, None, CPU, 1, True, prompt_embeds=pe)
    ref = _diffusers_sd(tok, enc, prompt=None, num_images_per_prompt=1, do_classifier_free_guidance=True,
                        prompt_embeds=pe)
    _close(ours[1], ref[1])


def test_sd_negative_errors(sd_parts):
    tok, enc = sd_parts
    with pytest.raises(ValueError, match="negative_prompt"):
        encode_prompt(tok, enc, ["a", "b"], CPU, 1, True, negative_prompt=["x", "y", "z"])
    with pytest.raises(TypeError, match="negative_prompt"):
        encode_prompt(tok, enc, "a", CPU, 1, True, negative_prompt=["x"])
    with pytest.raises(TypeError, match="prompt"):
        encode_prompt(tok, enc, 3, CPU, 1, True)


XL_CASES = [
    dict(prompt="a cat"),
    dict(prompt="a cat", negative_prompt="bad"),
    dict(prompt=["a cat", "dog"], prompt_2=["the dog", "cat"], negative_prompt=["x", "y"], negative_prompt_2=["z", "w"],
         num_images_per_prompt=2),
    dict(prompt="a cat", do_classifier_free_guidance=False, clip_skip=1),
    dict(prompt="a cat", negative_prompt="", clip_skip=2, num_images_per_prompt=2),
]


@pytest.mark.parametrize("force_zeros", [True, False])
@pytest.mark.parametrize("case", range(len(XL_CASES)))
def test_xl_matches_diffusers(xl_parts, case, force_zeros):
    tok, enc, tok2, enc2 = xl_parts
    kw = dict(num_images_per_prompt=1, do_classifier_free_guidance=True) | XL_CASES[case]
    ours = encode_prompt_xl([tok, tok2], [enc, enc2], device=CPU, force_zeros_for_empty_prompt=force_zeros, **kw)
    ref = _diffusers_xl(tok, enc, tok2, enc2, force_zeros=force_zeros, **kw)
    for a, b in zip(ours, ref):
        _close(a, b)


def test_xl_refiner_single_encoder(xl_parts):
    _, _, tok2, enc2 = xl_parts
    kw = dict(prompt="a cat", prompt_2="ignored", negative_prompt="bad", num_images_per_prompt=2,
              do_classifier_free_guidance=True)
    ours = encode_prompt_xl([None, tok2], [None, enc2], device=CPU, force_zeros_for_empty_prompt=False, **kw)
    ref = _diffusers_xl(None, None, tok2, enc2, force_zeros=False, **kw)
    for a, b in zip(ours, ref):
        _close(a, b)


def test_xl_embeds_passthrough(xl_parts):
    tok, enc, tok2, enc2 = xl_parts
    pe, ne, pp, npp = torch.randn(1, 77, 64), torch.randn(1, 77, 64), torch.randn(1, 32), torch.randn(1, 32)
    kw = dict(prompt=None, prompt_embeds=pe, negative_prompt_embeds=ne, pooled_prompt_embeds=pp,
              negative_pooled_prompt_embeds=npp, num_images_per_prompt=2, do_classifier_free_guidance=True)
    ours = encode_prompt_xl([tok, tok2], [enc, enc2], device=CPU, **kw)
    ref = _diffusers_xl(tok, enc, tok2, enc2, **kw)
    for a, b in zip(ours, ref):
        _close(a, b)


# ---------------------------------------------------------------------------- extensions
def test_options_on_with_short_plain_prompt_equal_diffusers(sd_parts, xl_parts):
    """Both switches on, a short prompt without emphasis syntax gives the same numbers."""
    tok, enc = sd_parts
    on = PromptOptions(long_prompts=True, emphasis=True)
    ours = encode_prompt(tok, enc, ["a cat", "dog"], CPU, 1, True, negative_prompt=["bad", "x"], options=on)
    ref = _diffusers_sd(tok, enc, prompt=["a cat", "dog"], num_images_per_prompt=1, do_classifier_free_guidance=True,
                        negative_prompt=["bad", "x"])
    _close(ours[0], ref[0])
    _close(ours[1], ref[1])
    tok, enc, tok2, enc2 = xl_parts
    ours = encode_prompt_xl([tok, tok2], [enc, enc2], "a cat", device=CPU, negative_prompt="x", options=on)
    ref = _diffusers_xl(tok, enc, tok2, enc2, prompt="a cat", negative_prompt="x", num_images_per_prompt=1,
                        do_classifier_free_guidance=True)
    for a, b in zip(ours, ref):
        _close(a, b)


def _window_embeds(tok, enc, ids):
    """Reference for one window: the encoder on BOS + ids + EOS + padding."""
    row = [tok.bos_token_id] + ids + [tok.eos_token_id]
    row += [tok.pad_token_id] * (77 - len(row))
    with torch.no_grad():
        return enc(torch.tensor([row]))[0][0]


@pytest.mark.parametrize("which", ["sd1", "sd2"])
def test_long_prompt_is_chunked(sd_parts, sd2_parts, which):
    tok, enc = sd_parts if which == "sd1" else sd2_parts
    ids = tok(LONG, add_special_tokens=False).input_ids
    assert 150 < len(ids) <= 225
    with torch.no_grad():
        pe, ne = encode_prompt(tok, enc, LONG, CPU, 2, True, options=PromptOptions(long_prompts=True))
    assert pe.shape == (2, 3 * 77, 32) and ne.shape == (2, 3 * 77, 32)
    for w in range(3):
        torch.testing.assert_close(pe[0, w * 77:(w + 1) * 77], _window_embeds(tok, enc, ids[w * 75:(w + 1) * 75]))
    # the negative "" is padded to the same number of windows, each an empty window
    empty = _window_embeds(tok, enc, [])
    for w in range(3):
        torch.testing.assert_close(ne[1, w * 77:(w + 1) * 77], empty)
    # off: truncated to one window, as Diffusers
    pe_off, _ = encode_prompt(tok, enc, LONG, CPU, 1, False)
    torch.testing.assert_close(pe_off[0], _window_embeds(tok, enc, ids[:75]))


def test_long_negative_pads_positive(sd_parts):
    tok, enc = sd_parts
    with torch.no_grad():
        pe, ne = encode_prompt(tok, enc, "a cat", CPU, 1, True, negative_prompt=LONG,
                               options=PromptOptions(long_prompts=True))
    assert pe.shape == ne.shape == (1, 3 * 77, 32)
    torch.testing.assert_close(pe[0, :77], _window_embeds(tok, enc, tok("a cat", add_special_tokens=False).input_ids))


def test_long_prompt_xl(xl_parts):
    tok, enc, tok2, enc2 = xl_parts
    with torch.no_grad():
        pe, ne, pp, npp = encode_prompt_xl([tok, tok2], [enc, enc2], LONG, device=CPU, negative_prompt="bad",
                                           options=PromptOptions(long_prompts=True))
        first, _, first_pooled, _ = encode_prompt_xl([tok, tok2], [enc, enc2], LONG, device=CPU,
                                                     do_classifier_free_guidance=False)
    assert pe.shape == ne.shape == (1, 3 * 77, 64)
    # the first window and the pooled output equal the truncated (Diffusers) encoding
    torch.testing.assert_close(pe[:, :77], first)
    torch.testing.assert_close(pp, first_pooled)


def test_prompt_embeds_and_long_negative_mismatch(sd_parts):
    tok, enc = sd_parts
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        encode_prompt(tok, enc, None, CPU, 1, True, negative_prompt=LONG, prompt_embeds=torch.randn(1, 77, 32),
                      options=PromptOptions(long_prompts=True))


def test_emphasis_weights_and_mean(sd_parts):
    tok, enc = sd_parts
    opts = PromptOptions(emphasis=True)
    with torch.no_grad():
        plain, _ = encode_prompt(tok, enc, "a cat dog", CPU, 1, False)
        weighted, _ = encode_prompt(tok, enc, "a (cat:1.5) dog", CPU, 1, False, options=opts)
        same, _ = encode_prompt(tok, enc, "a (cat:1) dog", CPU, 1, False, options=opts)
    torch.testing.assert_close(same, plain)
    ids = tok("a cat dog", add_special_tokens=False).input_ids
    n_a = len(tok("a ", add_special_tokens=False).input_ids)
    n_cat = len(tok("cat ", add_special_tokens=False).input_ids)
    weights = torch.ones(77)
    weights[1 + n_a:1 + n_a + n_cat] = 1.5
    expected = plain[0] * weights[:, None]
    expected = expected * (plain[0].mean() / expected.mean())
    assert len(ids) == n_a + n_cat + len(tok("dog", add_special_tokens=False).input_ids)
    torch.testing.assert_close(weighted[0], expected)
    torch.testing.assert_close(weighted.mean(), plain.mean())


def test_emphasis_batch_independent(sd_parts):
    tok, enc = sd_parts
    opts = PromptOptions(emphasis=True, long_prompts=True)
    with torch.no_grad():
        both, _ = encode_prompt(tok, enc, ["(cat:1.4) dog", "[dog] cat"], CPU, 1, False, options=opts)
        one, _ = encode_prompt(tok, enc, "[dog] cat", CPU, 1, False, options=opts)
    torch.testing.assert_close(both[1:], one)


def test_emphasis_off_keeps_brackets_as_text(sd_parts):
    tok, enc = sd_parts
    with torch.no_grad():
        ours, _ = encode_prompt(tok, enc, "(cat:1.5)", CPU, 1, False)
        ref, _ = _diffusers_sd(tok, enc, prompt="(cat:1.5)", num_images_per_prompt=1, do_classifier_free_guidance=False)
    torch.testing.assert_close(ours, ref)


def test_conditioner_objects(sd_parts, xl_parts):
    tok, enc = sd_parts
    cond = CLIPPromptConditioner(tok, enc, long_prompts=True)
    pe, ne = cond.encode_prompt(LONG, CPU, 1, True)
    assert pe.shape[1] == 3 * 77
    from kernel.protocols import Conditioner

    assert isinstance(cond, Conditioner)
    tok, enc, tok2, enc2 = xl_parts
    xl = CLIPXLPromptConditioner(tok, enc, tok2, enc2, force_zeros_for_empty_prompt=True)
    pe, ne, pp, npp = xl.encode_prompt("a cat", device=CPU)
    assert pe.shape == (1, 77, 64) and pp.shape == (1, 32)
    assert torch.count_nonzero(ne) == 0 and torch.count_nonzero(npp) == 0
