"""Multi-vector tokens through kernel_clip's prompt rewriting: plain prompts, A1111 emphasis, long prompts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import textual_inversion_fixtures as tf  # noqa: E402
from textual_inversion_fixtures import single_thread  # noqa: E402,F401

from kernel_clip import rewrite_prompt  # noqa: E402
from kernel_clip.tokens import pack_windows, prompt_tokens  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def loaded():
    """(Diffusers, ours), each with the 3-vector <t> and the 1-vector <s>."""
    d, o = tf.pipelines()
    for p in (d, o):
        p.load_textual_inversion([{"<t>": tf.vectors(3, seed=1)}, {"<s>": tf.vectors(1, seed=2)}])
    return d, o


def test_prompts_are_rewritten_as_diffusers_does(loaded):
    d, o = loaded
    prompts = ["a <t>, <s> (<t>:1.2)", "no token here", "<t><t>", "<s>"]
    assert o.maybe_convert_prompt(prompts, o.tokenizer) == d.maybe_convert_prompt(prompts, d.tokenizer)
    assert rewrite_prompt(o.tokenizer, prompts[0]) == "a <t> <t>_1 <t>_2, <s> (<t> <t>_1 <t>_2:1.2)"
    assert rewrite_prompt(o.tokenizer, "<t>_1 alone") == "<t>_1 alone"  # Diffusers would rewrite this too


def test_emphasis_weights_every_vector_of_the_token(loaded):
    _, o = loaded
    tok = o.tokenizer
    row = prompt_tokens(tok, "a (<t>:1.3) [<s>]", emphasis=True)
    t_ids = tok.convert_tokens_to_ids(["<t>", "<t>_1", "<t>_2"])
    s_id = tok.convert_tokens_to_ids("<s>")
    assert row.ids == tok("a", add_special_tokens=False).input_ids + t_ids + [s_id]
    assert row.weights == [1.0, 1.3, 1.3, 1.3, pytest.approx(1 / 1.1)]


def test_emphasis_encoding_with_the_token(loaded):
    d, o = loaded
    plain = tf.encode(d, prompt="a <t> on a mat", negative_prompt="<s>")  # Diffusers' numbers
    o.set_prompt_options(emphasis=True)
    try:
        same = tf.encode(o, prompt="a (<t>:1.0) on a mat", negative_prompt="(<s>:1.0)")
        weighted = tf.encode(o, prompt="a (<t>:1.4) on a mat", negative_prompt="<s>")
    finally:
        o.set_prompt_options(emphasis=False)
    for a, b in zip(same, plain):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert tf.differ(weighted[:1], plain[:1])
    torch.testing.assert_close(weighted[1], plain[1], atol=1e-6, rtol=0)


def test_long_prompt_carries_the_vectors_into_the_next_window(loaded):
    _, o = loaded
    tok, enc = o.tokenizer, o.text_encoder
    prompt = "a " * 74 + "<t> b"  # 74 tokens, then <t> <t>_1 <t>_2 and b: 78 > 75
    t_ids = tok.convert_tokens_to_ids(["<t>", "<t>_1", "<t>_2"])
    b_id = tok("b", add_special_tokens=False).input_ids
    ids, _, _ = pack_windows(tok, [prompt_tokens(tok, prompt, emphasis=False)], 2)
    assert ids[0, 0, 75].item() == t_ids[0] and ids[0, 0, 76].item() == tok.eos_token_id
    assert ids[0, 1, :5].tolist() == [tok.bos_token_id, *t_ids[1:], *b_id, tok.eos_token_id]
    o.set_prompt_options(long_prompts=True)
    try:
        pos, neg = tf.encode(o, prompt=prompt, negative_prompt="<s> " * 80)
    finally:
        o.set_prompt_options(long_prompts=False)
    assert pos.shape == neg.shape == (1, 2 * 77, tf.WIDTH)
    with torch.no_grad():
        second = enc(ids[:, 1])[0]
    torch.testing.assert_close(pos[:, 77:], second, atol=1e-6, rtol=0)
