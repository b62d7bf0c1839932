"""LoRA on SDXL pipelines (two text encoders, kohya ``lora_te1_`` / ``lora_te2_`` and SGM block names) against Diffusers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import lora_fixtures as lf  # noqa: E402
from lora_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

# The tiny SDXL UNet's attention blocks under the original (SGM) UNet's names, written out by hand.
SGM = {"down_blocks.1.attentions.0": "input_blocks.3.1", "mid_block.attentions.0": "middle_block.1",
       "up_blocks.0.attentions.0": "output_blocks.0.1", "up_blocks.0.attentions.1": "output_blocks.1.1"}


@pytest.fixture(scope="module")
def weights():
    d, _ = lf.pipelines(xl=True)
    return [(lf.random_lora(d.unet, seed=10 + 3 * i, rank=4 - i),
             lf.random_lora(d.text_encoder, lf.TEXT_TARGETS, seed=11 + 3 * i),
             lf.random_lora(d.text_encoder_2, lf.TEXT_TARGETS[:4], seed=12 + 3 * i)) for i in range(2)]


def _packed(unet, te, te2):
    return {**lf.prefixed("unet", unet), **lf.prefixed("text_encoder", te), **lf.prefixed("text_encoder_2", te2)}


@pytest.mark.parametrize("scale", [None, 0.6])
def test_sdxl_lora_matches_diffusers(weights, scale):
    d, o = lf.pipelines(xl=True)
    base = lf.images(o)
    d.load_lora_weights(_packed(*weights[0]), adapter_name="x")
    o.load_lora_weights(_packed(*weights[0]), adapter_name="x")
    assert o.get_list_adapters() == d.get_list_adapters() == {c: ["x"] for c in ("unet", "text_encoder", "text_encoder_2")}
    call = {} if scale is None else {"cross_attention_kwargs": {"scale": scale}}
    ours = lf.images(o, **call)
    assert np.abs(ours - base).max() > 0.05
    lf.assert_close(ours, lf.images(d, **call))


def _sgm(module: str) -> str:
    for diffusers_name, sgm in SGM.items():
        if module.startswith(diffusers_name + "."):
            return sgm + module[len(diffusers_name):]
    return module


def _nested(module: str) -> str:
    """kohya names CLIP layers as in transformers 4 (``text_model.encoder...``)."""
    return module if module.startswith("text_model.") else f"text_model.{module}"


def test_sdxl_kohya_with_sgm_names_matches_diffusers(weights):
    unet, te, te2 = weights[0]
    attention = {k: v for k, v in unet.items() if ".attentions." in k}
    alphas = lambda layers, a: {k[: -len(".lora_A.weight")]: a for k in layers if k.endswith("lora_A.weight")}  # noqa: E731
    kohya = {**lf.to_kohya(attention, "lora_unet_", alphas(attention, 2.0), rename=_sgm),
             **lf.to_kohya(te, "lora_te1_", alphas(te, 3.0), rename=_nested),
             **lf.to_kohya(te2, "lora_te2_", alphas(te2, 1.0), rename=_nested)}
    assert any("input_blocks_3_1" in k for k in kohya) and any("output_blocks_1_1" in k for k in kohya)
    d, o = lf.pipelines(xl=True)
    d.load_lora_weights(dict(kohya))
    o.load_lora_weights(dict(kohya))
    assert o.get_list_adapters() == {c: ["default_0"] for c in ("unet", "text_encoder", "text_encoder_2")}
    lf.assert_close(lf.images(o), lf.images(d))


def test_sdxl_mix_fuse_and_unload(weights):
    d, o = lf.pipelines(xl=True)
    base = lf.images(o)
    for i, name in enumerate(("x", "y")):
        d.load_lora_weights(_packed(*weights[i]), adapter_name=name)
        o.load_lora_weights(_packed(*weights[i]), adapter_name=name)
    mix = [0.6, {"unet": 0.8, "text_encoder": 0.0, "text_encoder_2": 1.3}]
    d.set_adapters(["x", "y"], mix)
    o.set_adapters(["x", "y"], mix)
    mixed = lf.images(o)
    lf.assert_close(mixed, lf.images(d))
    o.fuse_lora()
    lf.assert_close(lf.images(o), mixed, atol=1e-4)
    o.unfuse_lora()
    lf.assert_close(lf.images(o), mixed, atol=1e-4)
    o.unload_lora_weights()
    assert lf.tuner_count(o) == 0
    lf.assert_close(lf.images(o), base, atol=1e-5)  # unfusing subtracts what fusing added: float rounding
