"""T5 conditioner: the numbers equal running the transformers encoder the way Diffusers' pipelines do."""

import logging

import pytest
import torch

from kernel_t5 import T5PromptConditioner, check_max_sequence_length, t5_prompt_embeds
from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer


@pytest.fixture(scope="module")
def t5():
    tok = tiny_t5_tokenizer()
    return tok, tiny_t5_encoder(tok, d_model=32, seed=0)


def test_unmasked_embeddings_and_repeat(t5):
    tok, enc = t5
    got = t5_prompt_embeds(tok, enc, ["a cat", "the dog"], max_sequence_length=10, num_images_per_prompt=2)
    ids = tok(["a cat", "the dog"], padding="max_length", max_length=10, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = enc(ids)[0]
    assert got.shape == (4, 10, 32)
    torch.testing.assert_close(got, ref.repeat_interleave(2, dim=0))


def test_missing_encoder_gives_zeros(t5):
    tok, _ = t5
    got = t5_prompt_embeds(tok, None, "a cat", max_sequence_length=7, num_images_per_prompt=3, width=16,
                           dtype=torch.float16)
    assert got.shape == (3, 7, 16) and got.dtype == torch.float16 and not got.any()
    with pytest.raises(ValueError, match="width"):
        t5_prompt_embeds(tok, None, "a cat")


def test_masked_lowercased_conditioner(t5):
    tok, enc = t5
    cond = T5PromptConditioner(tok, enc, max_sequence_length=8)
    pos, mask, neg, neg_mask = cond.encode_prompt(" A Cat ", negative_prompt="", num_images_per_prompt=2)
    batch = tok(["a cat"], padding="max_length", max_length=8, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = enc(batch.input_ids, attention_mask=batch.attention_mask)[0]
    torch.testing.assert_close(pos, ref.repeat(2, 1, 1))
    assert mask.tolist() == batch.attention_mask.repeat(2, 1).tolist()
    assert neg.shape == pos.shape and neg_mask[0].sum() == 1  # "" is just </s>
    none = cond.encode_prompt("a cat", do_classifier_free_guidance=False)
    assert none[2] is None and none[3] is None
    with pytest.raises(ValueError, match="negative_prompt has 2 entries"):
        cond.encode_prompt("a cat", negative_prompt=["x", "y"])
    with pytest.raises(ValueError, match="prompt_attention_mask"):
        cond.encode_prompt(None, prompt_embeds=pos)


def test_truncation_warns(t5, caplog):
    tok, enc = t5
    with caplog.at_level(logging.WARNING):
        t5_prompt_embeds(tok, enc, "a photo of the cat and the dog", max_sequence_length=4)
    assert "truncated" in caplog.text


@pytest.mark.parametrize("value,error", [(513, ValueError), (0, ValueError), (12.0, TypeError), (True, TypeError)])
def test_max_sequence_length_validation(value, error):
    with pytest.raises(error, match="max_sequence_length"):
        check_max_sequence_length(value)
