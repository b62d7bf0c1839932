"""load_textual_inversion / unload_textual_inversion on Stable Diffusion 1.x against Diffusers."""

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

import kernel  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
PROMPTS = dict(prompt=["a <cat-toy> on a mat", "<cat-toy>"], negative_prompt=["<bad> blurry", "plain"])


def test_every_sd_pipeline_has_the_methods():
    for name in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
                 "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionPAGPipeline"):
        cls = kernel.component(name)
        assert callable(cls.load_textual_inversion) and callable(cls.unload_textual_inversion), name


@pytest.mark.parametrize("rows", [1, 3], ids=["one-vector", "three-vectors"])
def test_state_dicts_in_prompt_and_negative_prompt_match_diffusers(rows):
    d, o = tf.pipelines()
    base = tf.encode(o, **PROMPTS)
    cat, bad = {"<cat-toy>": tf.vectors(rows, seed=1)}, {"<bad>": tf.vectors(None, seed=2)}
    for p in (d, o):
        p.load_textual_inversion([cat, bad])
    assert list(o.tokenizer.added_tokens_encoder)[2:] == ["<cat-toy>", *[f"<cat-toy>_{i}" for i in range(1, rows)],
                                                          "<bad>"]
    tf.same_embeds(d, o, **PROMPTS)
    loaded = tf.encode(o, **PROMPTS)
    assert tf.differ(loaded[:1], base[:1]) and tf.differ(loaded[1:], base[1:])
    if rows > 1:  # every vector counts, not just the first
        first = tf.ours()
        first.load_textual_inversion([{"<cat-toy>": cat["<cat-toy>"][:1]}, bad])
        assert tf.differ(tf.encode(first, **PROMPTS)[:1], loaded[:1])


def test_images_match_diffusers():
    d, o = tf.pipelines()
    for p in (d, o):
        p.load_textual_inversion({"<cat-toy>": tf.vectors(2, seed=1)})
        p.load_textual_inversion(tf.vectors(1, seed=2), token="<bad>")
    call = dict(prompt="a <cat-toy> on a mat", negative_prompt="<bad>")
    fx_images = tf.images(d, **call), tf.images(o, **call)
    tf.fx.assert_images_close(*fx_images, atol=1e-4)


def _a1111_pt(path: Path, name: str, vec: torch.Tensor) -> Path:
    # the layout stable-diffusion-webui saves (Embedding.save)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(vec)}, "name": name,
                "step": 3000, "sd_checkpoint": "7460a6fa", "sd_checkpoint_name": "v1-5-pruned"}, path)
    return path


def _layout(kind: str, folder: Path, vec: torch.Tensor):
    """``(arguments to load_textual_inversion, keyword arguments)`` for a file of the given layout, token <cat-toy>."""
    if kind == "diffusers-safetensors-folder":
        save_file({"<cat-toy>": vec}, folder / "learned_embeds.safetensors")
        return (folder,), {}
    if kind == "diffusers-bin-folder":
        torch.save({"<cat-toy>": vec}, folder / "learned_embeds.bin")
        return (str(folder),), {}
    if kind == "weight-name":
        save_file({"<cat-toy>": vec}, folder / "cat.safetensors")
        return (str(folder),), {"weight_name": "cat.safetensors"}
    if kind == "a1111-pt":
        return (str(_a1111_pt(folder / "charturner.pt", "<cat-toy>", vec)),), {}
    if kind == "a1111-pt-renamed":
        return (str(_a1111_pt(folder / "charturner.pt", "charturner", vec)),), {"token": "<cat-toy>"}
    if kind == "a1111-safetensors":
        save_file({"emb_params": vec}, folder / "easyneg.safetensors")
        return (str(folder / "easyneg.safetensors"),), {"token": "<cat-toy>"}
    raise AssertionError(kind)


LAYOUTS = ["diffusers-safetensors-folder", "diffusers-bin-folder", "weight-name", "a1111-pt", "a1111-pt-renamed",
           "a1111-safetensors"]


@pytest.mark.parametrize("kind", LAYOUTS)
def test_file_layouts_match_diffusers(kind, tmp_path):
    args, kwargs = _layout(kind, tmp_path, tf.vectors(2, seed=4))
    d, o = tf.pipelines()
    for p in (d, o):
        p.load_textual_inversion(*args, **kwargs)
    assert "<cat-toy>_1" in o.tokenizer.get_vocab()
    tf.same_embeds(d, o, prompt="a <cat-toy> on a mat", negative_prompt="<cat-toy>")


def test_a1111_safetensors_is_named_after_its_file(tmp_path):
    vec = tf.vectors(2, seed=4)
    save_file({"emb_params": vec}, tmp_path / "easyneg.safetensors")
    o, named = tf.ours(), tf.ours()
    o.load_textual_inversion(tmp_path / "easyneg.safetensors")
    named.load_textual_inversion({"easyneg": vec})
    assert list(o.tokenizer.added_tokens_encoder)[2:] == ["easyneg", "easyneg_1"]
    call = dict(prompt="a cat", negative_prompt="easyneg")
    for a, b in zip(tf.encode(o, **call), tf.encode(named, **call)):
        assert torch.equal(a, b)


def test_tensor_with_one_token_per_vector_and_lists_of_files_match_diffusers(tmp_path):
    save_file({"<x>": tf.vectors(1, seed=6)}, tmp_path / "x.safetensors")
    torch.save({"<y>": tf.vectors(3, seed=7)}, tmp_path / "y.bin")
    d, o = tf.pipelines()
    for p in (d, o):
        p.load_textual_inversion(tf.vectors(2, seed=5), token=["<s0>", "<s1>"])
        p.load_textual_inversion([str(tmp_path / "x.safetensors"), str(tmp_path / "y.bin")], token=["<p>", "<q>"])
    assert list(o.tokenizer.added_tokens_encoder)[2:] == ["<s0>", "<s1>", "<p>", "<q>", "<q>_1", "<q>_2"]
    tf.same_embeds(d, o, prompt="<s1> and <s0>, <q> <p>", negative_prompt="<q>")


def test_hub_repo_from_the_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    vec = tf.vectors(2, seed=8)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-ti"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({"<cat-toy>": vec}, snapshot / "learned_embeds.safetensors")
    torch.save({"<other>": vec}, snapshot / "other.bin")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    expected = tf.ours()
    expected.load_textual_inversion({"<cat-toy>": vec})
    call = dict(prompt="a <cat-toy>", negative_prompt="<other>")
    o = tf.ours()
    o.load_textual_inversion("someone/tiny-ti", cache_dir=str(tmp_path / "hub"), hf_token=None)
    o.load_textual_inversion("someone/tiny-ti", weight_name="other.bin", cache_dir=str(tmp_path / "hub"))
    expected.load_textual_inversion({"<other>": vec})
    for a, b in zip(tf.encode(o, **call), tf.encode(expected, **call)):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="learned_embeds.safetensors or learned_embeds.bin"):
        tf.ours().load_textual_inversion("someone/absent-ti", cache_dir=str(tmp_path / "hub"))


def test_unload_gives_back_the_exact_base_pipeline():
    o = tf.ours()
    call = dict(prompt="a <cat-toy> on a mat", negative_prompt="<bad>")
    before, base = tf.text_state(o), tf.images(o, **call)
    o.load_textual_inversion([{"<cat-toy>": tf.vectors(3, seed=1)}, {"<bad>": tf.vectors(1, seed=2)}])
    assert np.abs(tf.images(o, **call) - base).max() > 1e-3
    o.unload_textual_inversion()
    tf.assert_same_state(before, tf.text_state(o), same_objects=False)
    np.testing.assert_array_equal(tf.images(o, **call), base)


def test_unload_one_token_removes_all_its_vectors_and_keeps_the_rest():
    d, o = tf.pipelines()
    bad = {"<bad>": tf.vectors(2, seed=2)}
    o.load_textual_inversion([{"<cat-toy>": tf.vectors(3, seed=1)}, bad])
    o.unload_textual_inversion("<cat-toy>")
    assert list(o.tokenizer.added_tokens_encoder)[2:] == ["<bad>", "<bad>_1"]
    assert o.text_encoder.get_input_embeddings().weight.shape[0] == len(o.tokenizer) == 524
    d.load_textual_inversion(bad)  # Diffusers with only <bad> loaded
    tf.same_embeds(d, o, prompt="a <cat-toy> on a mat", negative_prompt="<bad>")
    o.unload_textual_inversion(["<bad>"])
    assert list(o.tokenizer.added_tokens_encoder) == ["<|startoftext|>", "<|endoftext|>"]


def test_loading_under_sequential_cpu_offload_keeps_the_offload():
    pytest.importorskip("accelerate")
    emb = {"<cat-toy>": tf.vectors(2, seed=1)}
    call = dict(prompt="a <cat-toy> on a mat")
    plain, o = tf.ours(), tf.ours()
    plain.load_textual_inversion(emb)
    o.enable_sequential_cpu_offload(device="cpu")
    o.load_textual_inversion(emb)
    assert o._offload_kind == "sequential"
    np.testing.assert_allclose(tf.images(o, **call), tf.images(plain, **call), atol=1e-6)
    o.unload_textual_inversion()
    assert o._offload_kind == "sequential" and len(o.tokenizer) == 522
