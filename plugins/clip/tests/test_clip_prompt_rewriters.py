"""Prompt rewriters: every prompt passes through them, per tokenizer, before it is tokenized."""

from __future__ import annotations

import torch

from kernel_clip import PromptOptions, add_prompt_rewriter, encode_prompt, encode_prompt_xl, remove_prompt_rewriter
from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer

MODES = [PromptOptions(), PromptOptions(long_prompts=True, emphasis=True)]


def test_rewriters_apply_to_prompt_and_negative_prompt_in_every_mode(tmp_path):
    tok = tiny_clip_tokenizer(tmp_path)
    enc = tiny_clip_text_model(tok, seed=0)
    expected = [encode_prompt(tok, enc, "a (cat)", negative_prompt="cat", options=o) for o in MODES]

    def dog_to_cat(tokenizer, prompt):
        assert tokenizer is tok
        return prompt.replace("dog", "cat")

    add_prompt_rewriter(dog_to_cat)
    add_prompt_rewriter(dog_to_cat)  # once only
    try:
        got = [encode_prompt(tok, enc, "a (dog)", negative_prompt="dog", options=o) for o in MODES]
    finally:
        remove_prompt_rewriter(dog_to_cat)
    for want, have in zip(expected, got):
        for a, b in zip(want, have):
            assert torch.equal(a, b)
    after = encode_prompt(tok, enc, "a (dog)", negative_prompt="dog")
    assert (after[0] - expected[0][0]).abs().max() > 1e-3


def test_rewriters_see_each_sdxl_tokenizer(tmp_path):
    tok, tok2 = tiny_clip_tokenizer(tmp_path / "1"), tiny_clip_tokenizer(tmp_path / "2", pad_token="!")
    encoders = [tiny_clip_text_model(tok, seed=0), tiny_clip_text_model(tok2, seed=1, with_projection=True)]
    seen = []

    def record(tokenizer, prompt):
        seen.append((tokenizer, prompt))
        return prompt

    add_prompt_rewriter(record)
    try:
        for options in MODES:
            encode_prompt_xl([tok, tok2], encoders, "a cat", negative_prompt="blurry", options=options)
    finally:
        remove_prompt_rewriter(record)
    assert {(t is tok, p) for t, p in seen} == {(True, "a cat"), (False, "a cat"), (True, "blurry"), (False, "blurry")}
