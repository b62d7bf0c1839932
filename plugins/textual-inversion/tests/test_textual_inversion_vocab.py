"""Adding and removing tokens with their embedding rows (kernel_textual_inversion.vocab), on both kinds of tokenizer."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizer

sys.path.insert(0, str(Path(__file__).parent))
import textual_inversion_fixtures as tf  # noqa: E402

from kernel_clip.testing import tiny_clip_text_model  # noqa: E402
from kernel_textual_inversion import vocab  # noqa: E402


class CharTokenizer(PreTrainedTokenizer):
    """A Python ("slow") tokenizer: one token per character (transformers 4.x's CLIPTokenizer is this kind)."""

    def __init__(self, **kwargs):
        chars = [chr(c) for c in range(32, 127)]
        self._vocab = {t: i for i, t in enumerate([*chars, "<bos>", "<eos>"])}
        super().__init__(bos_token="<bos>", eos_token="<eos>", pad_token="<eos>", model_max_length=77, **kwargs)

    @property
    def vocab_size(self):
        return len(self._vocab)

    def get_vocab(self):
        return {**self._vocab, **self._added_tokens_encoder}

    def _tokenize(self, text):
        return list(text)

    def _convert_token_to_id(self, token):
        return self._vocab.get(token, 0)

    def _convert_id_to_token(self, index):
        return {i: t for t, i in self._vocab.items()}.get(index, " ")


def _pairs():
    fast = copy.deepcopy(tf.fx.tokenizer("sd1"))
    slow = CharTokenizer()
    return [pytest.param(tok, tiny_clip_text_model(tok, seed=0), id=kind) for kind, tok in (("fast", fast), ("slow", slow))]


@pytest.mark.parametrize("tok, enc", _pairs())
def test_add_remove_keeps_ids_and_rows_aligned(tok, enc):
    base_len, base_rows = len(tok), enc.get_input_embeddings().weight.detach().clone()
    a, b = tf.vectors(3, seed=1), tf.vectors(1, seed=2)
    vocab.add_tokens(tok, enc, ["<a>", "<a>_1", "<a>_2"], a)
    vocab.add_tokens(tok, enc, ["<b>"], b)
    weight = enc.get_input_embeddings().weight
    assert len(tok) == weight.shape[0] == enc.config.vocab_size == base_len + 4
    assert torch.equal(weight[tok.convert_tokens_to_ids("<b>")], b[0])
    assert vocab.expand_prompt(tok, "x <a>!") == "x <a> <a>_1 <a>_2!"
    ids = tok("x <a> <a>_1 <a>_2", add_special_tokens=False).input_ids
    assert [i for i in ids if i >= base_len] == [base_len, base_len + 1, base_len + 2]

    vocab.remove_tokens(tok, enc, ["<a>", "<a>_1", "<a>_2"])  # <b> moves down to the first free id
    weight = enc.get_input_embeddings().weight
    assert vocab.added_tokens(tok) == {"<b>": base_len} and weight.shape[0] == len(tok) == base_len + 1
    assert torch.equal(weight[base_len], b[0]) and torch.equal(weight[:base_len], base_rows)
    assert len(tok.tokenize("<a>")) > 1  # the removed name is plain text again
    assert tok("<b>", add_special_tokens=False).input_ids == [base_len]
    vocab.remove_tokens(tok, enc, ["<b>"])
    assert len(tok) == base_len and torch.equal(enc.get_input_embeddings().weight, base_rows)


def test_removing_an_added_token_of_the_model_vocabulary_keeps_its_row():
    tok = copy.deepcopy(tf.fx.tokenizer("sd1"))
    enc = tiny_clip_text_model(tok, seed=0)
    tok.add_tokens(["a</w>"])  # already a word of the model: an added token with the model's id
    base_rows = enc.get_input_embeddings().weight.detach().clone()
    vocab.add_tokens(tok, enc, ["<t>"], tf.vectors(1, seed=1))
    vocab.remove_tokens(tok, enc, list(vocab.added_tokens(tok)))
    assert vocab.added_tokens(tok) == {} and torch.equal(enc.get_input_embeddings().weight, base_rows)


def test_a_mismatched_tokenizer_and_encoder_are_refused():
    tok = copy.deepcopy(tf.fx.tokenizer("sd1"))
    enc = tiny_clip_text_model(tok, seed=0, vocab_size=len(tok) - 1)
    with pytest.raises(ValueError, match=f"tokenizer has {len(tok)} tokens but the text encoder only {len(tok) - 1}"):
        vocab.check_aligned(tok, enc, "tokenizer / text_encoder")
