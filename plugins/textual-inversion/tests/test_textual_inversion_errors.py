"""Bad input: a clear error naming the file or token, and the tokenizers and text encoders exactly as before."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
import textual_inversion_fixtures as tf  # noqa: E402
from textual_inversion_fixtures import single_thread  # noqa: E402,F401

import kernel  # noqa: E402
from kernel_textual_inversion import vocab  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pipe():
    """Our SD pipeline with <cat-toy> (2 vectors) loaded; every test leaves it as it was."""
    o = tf.ours()
    o.load_textual_inversion({"<cat-toy>": tf.vectors(2, seed=1)})
    return o


@pytest.fixture(scope="module")
def xl_pipe():
    return tf.ours(xl=True)


def _refused(pipe, error, match: str, *args, **kwargs) -> None:
    before = tf.text_state(pipe)
    with pytest.raises(error, match=match):
        pipe.load_textual_inversion(*args, **kwargs)
    tf.assert_same_state(before, tf.text_state(pipe))


def _bad_cases(tmp: Path, write: bool = True) -> dict:
    """``{case: (error, message pattern, args, kwargs)}``; the files are written into ``tmp``."""
    v = tf.vectors(2, seed=3)
    if write:
        save_file({"<wide>": tf.vectors(2, seed=3, width=16)}, tmp / "wide.safetensors")
        save_file({"a": v, "b": v.clone()}, tmp / "two.safetensors")
        torch.save({"<i>": torch.arange(32)}, tmp / "ints.bin")
        (tmp / "cut.safetensors").write_bytes((tmp / "wide.safetensors").read_bytes()[:40])
        torch.save(torch.zeros(0, 32), tmp / "empty.pt")
    return {
        "token-already-loaded": (ValueError, "'<cat-toy>' is already in the vocabulary of tokenizer", ({"<cat-toy>": v},), {}),
        "multi-vector-name-taken": (ValueError, r"'<cat-toy>_1'", ({"<cat-toy>_1": v},), {}),
        "token-in-base-vocab": (ValueError, "'a' is already in the vocabulary", ({"a": v},), {}),
        "second-of-a-list-clashes": (ValueError, "state dict #1: token '<cat-toy>'", ([{"<new>": v}, {"<cat-toy>": v}],), {}),
        "wrong-width": (ValueError, re.escape(str(tmp / "wide.safetensors")) + ".*'<wide>' is 16 wide but text_encoder takes 32",
                        (tmp / "wide.safetensors",), {}),
        "unknown-layout": (ValueError, re.escape(str(tmp / "two.safetensors")) + ": unknown textual-inversion layout",
                           (str(tmp / "two.safetensors"),), {}),
        "not-floating-point": (ValueError, "ints.bin: '<i>' is not a floating-point tensor", (str(tmp / "ints.bin"),), {}),
        "zero-vectors": (ValueError, r"empty.pt: the tensor has shape \(0, 32\)", (str(tmp / "empty.pt"),), {"token": "<e>"}),
        "truncated-file": (ValueError, "cut.safetensors: it is corrupt or truncated", (str(tmp / "cut.safetensors"),), {}),
        "tokens-vs-files": (ValueError, "has 2 embeddings but token has 1", ([{"<x>": v}, {"<y>": v}],), {"token": ["<p>"]}),
        "tokens-vs-vectors": (ValueError, "the tensor: holds 2 vectors but token lists 3 names", (v,),
                              {"token": ["<p>", "<q>", "<r>"]}),
        "repeated-token": (ValueError, r"token lists \['<p>'\] more than once", ([v, v],), {"token": ["<p>", "<p>"]}),
        "added-twice": (ValueError, r"the tokens \['<d>_1'\] would be added to tokenizer twice",
                        ([{"<d>": v}, {"<d>_1": v[0]}],), {}),
        "tensor-without-token": (ValueError, "the tensor: has no token name stored; pass token=", (v,), {}),
        "bad-token-type": (TypeError, "token must be a str", (v,), {"token": 3}),
        "blank-token": (ValueError, "token must not be empty", (v,), {"token": " "}),
        "unexpected-kwarg": (TypeError, r"unexpected keyword arguments \['adapter_name'\]", (v,),
                             {"token": "<p>", "adapter_name": "x"}),
        "not-a-source": (TypeError, "pretrained_model_name_or_path must be", (3.0,), {}),
        "missing-file": (FileNotFoundError, "no textual-inversion file '.*absent.pt'", (str(tmp / "absent.pt"),), {}),
        "sdxl-parts-need-a-pair": (ValueError, "its clip_g part goes into tokenizer_2 / text_encoder_2, which "
                                   "StableDiffusionPipeline does not have", ({"clip_l": v, "clip_g": v},), {"token": "<x>"}),
        "sdxl-parts-with-explicit-encoder": (ValueError, "holds SDXL embeddings", ({"clip_l": v, "clip_g": v},),
                                             {"token": "<x>", "tokenizer": None, "text_encoder": "SELF"}),
    }


CASES = list(_bad_cases(Path("unused"), write=False))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_and_nothing_changes(case, pipe, tmp_path):
    error, match, args, kwargs = _bad_cases(tmp_path)[case]
    if kwargs.get("text_encoder") == "SELF":
        kwargs = {**kwargs, "text_encoder": pipe.text_encoder}
    _refused(pipe, error, match, *args, **kwargs)


def test_legacy_files_are_only_unpickled_weights_only(pipe, tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"<evil>": Payload()}, tmp_path / "evil.pt")
    _refused(pipe, ValueError, r"evil.pt with torch.load\(weights_only=True\)", str(tmp_path / "evil.pt"))


def test_sdxl_width_error_in_the_second_part_adds_nothing_to_the_first(xl_pipe):
    state = {"clip_l": tf.vectors(2, seed=3), "clip_g": tf.vectors(2, seed=4, width=48)}
    _refused(xl_pipe, ValueError, "the embedding for 'unaesthetic' is 48 wide but text_encoder_2 takes 32", state,
             token="unaesthetic")


def test_a_failure_while_adding_puts_every_encoder_back(xl_pipe, monkeypatch):
    calls = []
    real = vocab.add_tokens

    def add_then_fail(tokenizer, text_encoder, tokens, vectors):
        calls.append(tokens)
        if len(calls) == 2:
            raise RuntimeError("simulated failure in the second encoder")
        real(tokenizer, text_encoder, tokens, vectors)

    monkeypatch.setattr(vocab, "add_tokens", add_then_fail)
    before = tf.text_state(xl_pipe)
    with pytest.raises(RuntimeError, match="simulated"):
        xl_pipe.load_textual_inversion({"clip_l": tf.vectors(2, seed=3), "clip_g": tf.vectors(2, seed=4)}, token="<u>")
    assert len(calls) == 2
    tf.assert_same_state(before, tf.text_state(xl_pipe), same_objects=False)
    assert "<u>" not in xl_pipe.tokenizer.get_vocab()


def test_pipeline_without_a_tokenizer_says_which_argument_to_pass():
    theirs, ours = tf.fx.xl_components(refiner=True)
    refiner = kernel.component("StableDiffusionXLImg2ImgPipeline")(**ours, requires_aesthetics_score=True)
    with pytest.raises(ValueError, match="the embedding goes into tokenizer / text_encoder, which "
                                         "StableDiffusionXLImg2ImgPipeline does not have; pass tokenizer="):
        refiner.load_textual_inversion({"<x>": tf.vectors(1, seed=1)})
    with pytest.raises(ValueError, match="StableDiffusionXLImg2ImgPipeline has no tokenizer; pass tokenizer="):
        refiner.load_textual_inversion({"<x>": tf.vectors(1, seed=1)}, text_encoder=refiner.text_encoder_2)
    with pytest.raises(ValueError, match="its clip_l part goes into tokenizer / text_encoder"):
        refiner.load_textual_inversion({"clip_l": tf.vectors(1, seed=1), "clip_g": tf.vectors(1, seed=2)}, token="<x>")


def test_unload_of_a_token_not_loaded_removes_nothing(pipe):
    before = tf.text_state(pipe)
    with pytest.raises(ValueError, match=r"tokens \['<nope>'\] are not loaded; loaded tokens: \['<cat-toy>', '<cat-toy>_1'\]"):
        pipe.unload_textual_inversion(["<cat-toy>", "<nope>"])
    with pytest.raises(TypeError, match="tokens must be a str"):
        pipe.unload_textual_inversion(3)
    tf.assert_same_state(before, tf.text_state(pipe))


def test_width_error_names_the_encoder_the_embedding_fits():
    from kernel_clip.testing import tiny_clip_text_model

    _, parts = tf.fx.xl_components()
    parts["text_encoder_2"] = tiny_clip_text_model(parts["tokenizer_2"], seed=3, with_projection=True, hidden_size=48)
    o = kernel.component("StableDiffusionXLPipeline")(**parts)
    _refused(o, ValueError, r"is 48 wide but text_encoder takes 32 \(it fits text_encoder_2: pass "
             r"tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2\)", {"<g>": tf.vectors(1, seed=1, width=48)})
