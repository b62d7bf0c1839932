"""``load_lora_weights(..., hotswap=True)``: a loaded adapter's weights replaced in place - the same pictures as a fresh
load (and as Diffusers' hot-swap), a ``torch.compile``d UNet that runs on without recompiling, ``enable_lora_hotswap``
for larger ranks, and clear errors that leave the pipeline as it was."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import lora_fixtures as lf  # noqa: E402
from lora_fixtures import single_thread  # noqa: E402,F401

diffusers = lf.diffusers
pytestmark = pytest.mark.usefixtures("single_thread")
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


@pytest.fixture(scope="module")
def weights():
    d, _ = lf.pipelines()
    unet = {name: lf.random_lora(d.unet, ATTENTION, rank=4, seed=seed) for name, seed in (("a", 0), ("b", 1))}
    unet["small"] = lf.random_lora(d.unet, ATTENTION, rank=2, seed=2)
    unet["wide"] = lf.random_lora(d.unet, ATTENTION, rank=8, seed=3)
    unet["fewer"] = lf.random_lora(d.unet, ATTENTION[:2], rank=4, seed=4)
    text = {name: lf.random_lora(d.text_encoder, lf.TEXT_TARGETS, seed=seed) for name, seed in (("a", 5), ("b", 6))}
    return unet, text


def _unet_inputs():
    g = torch.Generator().manual_seed(0)
    return dict(sample=torch.randn(1, 4, 16, 16, generator=g), timestep=torch.tensor(10),
                encoder_hidden_states=torch.randn(1, 7, 32, generator=g))


def _copy(layers: dict) -> dict:
    return {k: v.clone() for k, v in layers.items()}


def _fresh(layers: dict, **kwargs):
    _, o = lf.pipelines()
    o.load_lora_weights(layers, adapter_name="fresh", **kwargs)
    return o


def test_hotswap_equals_a_fresh_load_and_diffusers(weights):
    unet, text = weights
    a = {**lf.prefixed("unet", unet["a"]), **lf.prefixed("text_encoder", text["a"])}
    b = {**lf.prefixed("unet", unet["b"]), **lf.prefixed("text_encoder", text["b"])}
    _, o = lf.pipelines()
    o.load_lora_weights(a, adapter_name="x")
    params = {id(p) for p in o.unet.parameters()}
    kept = _copy(a)
    o.load_lora_weights(b, adapter_name="x", hotswap=True)
    assert {id(p) for p in o.unet.parameters()} == params, "hot-swapping must keep every parameter object"
    assert all(torch.equal(a[k], v) for k, v in kept.items()), "the first LoRA's tensors must stay the caller's"
    assert o.get_list_adapters() == {"unet": ["x"], "text_encoder": ["x"]}
    lf.assert_close(lf.images(o), lf.images(_fresh(b)), atol=1e-5)
    # Diffusers hot-swaps the UNet only (and writes into the tensors it was given: it gets copies)
    d, o = lf.pipelines()
    for p in (d, o):
        p.load_lora_weights(_copy(lf.prefixed("unet", unet["a"])), adapter_name="x")
        p.load_lora_weights(_copy(lf.prefixed("unet", unet["b"])), adapter_name="x", hotswap=True)
    lf.assert_close(lf.images(o), lf.images(d))


@torch.no_grad()
def test_compiled_unet_does_not_recompile_and_matches_a_fresh_load(weights):
    unet, _ = weights
    _, o = lf.pipelines()
    o.load_lora_weights(lf.prefixed("unet", unet["a"]), adapter_name="x")
    torch._dynamo.reset()
    o.unet = torch.compile(o.unet, backend="eager")
    x = _unet_inputs()
    before = o.unet(**x).sample
    o.load_lora_weights(lf.prefixed("unet", unet["b"]), adapter_name="x", hotswap=True)
    with torch.compiler.set_stance("fail_on_recompile"):
        after = o.unet(**x).sample
        expected = _fresh(lf.prefixed("unet", unet["b"])).unet(**x).sample
        torch.testing.assert_close(after, expected, atol=1e-5, rtol=0)
        assert (after - before).abs().max() > 1e-3
        # a smaller rank, and a new alpha: written into the same parameters too
        for name, extra in (("small", {}), ("a", {"alpha": 3.0})):
            o.load_lora_weights(_with_metadata(lf.prefixed("unet", unet[name]), extra), adapter_name="x", hotswap=True)
            expected = _fresh(_with_metadata(lf.prefixed("unet", unet[name]), extra)).unet(**x).sample
            torch.testing.assert_close(o.unet(**x).sample, expected, atol=1e-5, rtol=0)
    torch._dynamo.reset()


def _with_metadata(layers: dict, extra: dict):
    """``layers`` with an ``alpha`` for every layer (``extra["alpha"]``), as kohya-style keys give it."""
    if not extra:
        return layers
    alpha = extra["alpha"]
    out = dict(layers)
    for key in layers:
        if key.endswith(".lora_A.weight"):
            out[key[: -len(".lora_A.weight")] + ".alpha"] = torch.tensor(alpha)
    return out


def test_enable_lora_hotswap_takes_larger_ranks(weights):
    unet, _ = weights
    _, o = lf.pipelines()
    o.enable_lora_hotswap(target_rank=8)
    o.load_lora_weights(lf.prefixed("unet", unet["a"]), adapter_name="x")
    lf.assert_close(lf.images(o), lf.images(_fresh(lf.prefixed("unet", unet["a"]))), atol=1e-5)  # padding changes nothing
    o.load_lora_weights(lf.prefixed("unet", unet["wide"]), adapter_name="x", hotswap=True)
    lf.assert_close(lf.images(o), lf.images(_fresh(lf.prefixed("unet", unet["wide"]))), atol=1e-5)
    with pytest.raises(RuntimeError, match="before loading the first"):
        o.enable_lora_hotswap(target_rank=16)


def test_mismatches_are_refused_and_change_nothing(weights):
    unet, text = weights
    _, o = lf.pipelines()
    o.load_lora_weights(lf.prefixed("unet", unet["a"]), adapter_name="x")
    image = lf.images(o)
    state = {k: v.clone() for k, v in o.unet.state_dict().items()}
    cases = [
        (lf.prefixed("unet", unet["wide"]), "x", "rank 8 is larger than the loaded adapter's 4"),
        (lf.prefixed("unet", unet["fewer"]), "x", r"adapts other layers: 0 the adapter does not \(\[\]\), 16 it leaves out"),
        ({**lf.prefixed("unet", unet["b"]), **lf.prefixed("text_encoder", text["b"])}, "x",
         r"LoRA weights for \['text_encoder', 'unet'\], while adapter 'x' is loaded in \['unet'\]"),
        (lf.prefixed("unet", unet["b"]), "y", r"adapter_name must be one of \['x'\]"),
    ]
    for layers, name, message in cases:
        with pytest.raises(ValueError, match=message):
            o.load_lora_weights(layers, adapter_name=name, hotswap=True)
    o.fuse_lora()
    with pytest.raises(ValueError, match="fused into the weights; unfuse_lora"):
        o.load_lora_weights(lf.prefixed("unet", unet["b"]), adapter_name="x", hotswap=True)
    o.unfuse_lora()
    after = o.unet.state_dict()
    assert all(torch.allclose(after[k], v, atol=1e-6) for k, v in state.items())
    lf.assert_close(lf.images(o), image, atol=1e-5)
