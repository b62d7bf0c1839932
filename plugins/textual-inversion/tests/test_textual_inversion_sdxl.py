"""SDXL: embeddings for both text encoders (``clip_l`` / ``clip_g``) against Diffusers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
import textual_inversion_fixtures as tf  # noqa: E402
from textual_inversion_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")
CALL = dict(prompt="a woman in front of a <mountain>", negative_prompt="unaesthetic")


def _sdxl_embedding() -> dict[str, torch.Tensor]:
    return {"clip_l": tf.vectors(2, seed=11), "clip_g": tf.vectors(2, seed=12)}


def _two_calls(pipe, state: dict, token: str) -> None:
    """As Diffusers documents it: one call per text encoder."""
    pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)


def test_two_calls_match_diffusers():
    d, o = tf.pipelines(xl=True)
    base = tf.encode(o, **CALL)
    state = _sdxl_embedding()
    mountain = tf.vectors(1, seed=13)
    for p in (d, o):
        _two_calls(p, state, "unaesthetic")
        p.load_textual_inversion({"<mountain>": mountain})  # the first encoder only
    assert "unaesthetic_1" in o.tokenizer.get_vocab() and "unaesthetic_1" in o.tokenizer_2.get_vocab()
    assert "<mountain>" not in o.tokenizer_2.get_vocab()
    tf.same_embeds(d, o, **CALL)
    loaded = tf.encode(o, **CALL)
    assert tf.differ(loaded[1:2], base[1:2]) and tf.differ(loaded[3:], base[3:])  # negative, pooled negative
    tf.fx.assert_images_close(tf.images(d, **CALL), tf.images(o, **CALL), atol=1e-4)


def test_one_call_with_an_sdxl_file_loads_both_encoders(tmp_path):
    state = _sdxl_embedding()
    save_file(state, tmp_path / "unaesthetic.safetensors")
    d, o = tf.pipelines(xl=True)
    _two_calls(d, state, "unaesthetic")
    o.load_textual_inversion(tmp_path / "unaesthetic.safetensors")  # named after the file, as A1111 does
    tf.same_embeds(d, o, **CALL)
    o2 = tf.ours(xl=True)
    o2.load_textual_inversion(state, token="unaesthetic")
    for a, b in zip(tf.encode(o, **CALL), tf.encode(o2, **CALL)):
        assert torch.equal(a, b)


def test_unload_clears_both_encoders_and_restores_the_base_output():
    o = tf.ours(xl=True)
    before, base = tf.text_state(o), tf.images(o, **CALL)
    o.load_textual_inversion(_sdxl_embedding(), token="unaesthetic")
    o.load_textual_inversion({"<mountain>": tf.vectors(3, seed=13)})
    assert np.abs(tf.images(o, **CALL) - base).max() > 1e-3
    o.unload_textual_inversion()
    tf.assert_same_state(before, tf.text_state(o), same_objects=False)
    np.testing.assert_array_equal(tf.images(o, **CALL), base)


def test_unload_from_one_encoder_as_diffusers_documents():
    o = tf.ours(xl=True)
    _two_calls(o, _sdxl_embedding(), "unaesthetic")
    o.unload_textual_inversion(tokens=["unaesthetic"], text_encoder=o.text_encoder_2, tokenizer=o.tokenizer_2)
    assert "unaesthetic" not in o.tokenizer_2.get_vocab() and "unaesthetic_1" not in o.tokenizer_2.get_vocab()
    assert "unaesthetic_1" in o.tokenizer.get_vocab()
    o.unload_textual_inversion("unaesthetic", text_encoder=o.text_encoder, tokenizer=o.tokenizer)
    assert len(o.tokenizer) == len(o.tokenizer_2) == 522


def test_long_prompts_and_emphasis_expand_in_both_tokenizers():
    from kernel_clip.tokens import prompt_tokens

    o = tf.ours(xl=True)
    o.load_textual_inversion(_sdxl_embedding(), token="<u>")
    for tok in (o.tokenizer, o.tokenizer_2):
        row = prompt_tokens(tok, "x (<u>:1.5)", emphasis=True)
        ids = tok.convert_tokens_to_ids(["<u>", "<u>_1"])
        assert row.ids[-2:] == ids and row.weights[-2:] == [1.5, 1.5]
    o.set_prompt_options(long_prompts=True, emphasis=True)
    embeds = tf.encode(o, prompt="a " * 74 + "(<u>:1.2)", negative_prompt="<u>")
    assert embeds[0].shape == embeds[1].shape == (1, 2 * 77, 2 * tf.WIDTH)
