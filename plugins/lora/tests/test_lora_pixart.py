"""LoRA on PixArt pipelines.  Diffusers has no LoRA methods for PixArt, so the oracle is Diffusers' pipeline with the
LoRA merged into its transformer's weights by hand (``W + weight * alpha / rank * up @ down``)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import transformer_fixtures as tf  # noqa: E402
from transformer_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def weights():
    d, _ = tf.pixart_pipelines()
    return {"a": tf.random_lora(d.transformer, tf.PIXART_TARGETS, seed=0, strength=0.8),
            "b": tf.random_lora(d.transformer, tf.PIXART_TARGETS[:4], rank=2, seed=1, strength=0.8)}


@torch.no_grad()
def merged(pipe, loras: list[tuple[dict, float]]):
    """A copy of Diffusers pipeline ``pipe`` whose transformer has each ``(peft layers, weight)`` merged in."""
    out = copy.copy(pipe)
    out.transformer = copy.deepcopy(pipe.transformer)
    modules = dict(out.transformer.named_modules())
    for layers, weight in loras:
        for key, down in layers.items():
            if key.endswith(".lora_A.weight"):
                module = key[: -len(".lora_A.weight")]
                modules[module].weight += weight * layers[f"{module}.lora_B.weight"] @ down  # alpha = rank
    return out


def test_transformer_lora_matches_merged_weights(weights, tmp_path):
    d, o = tf.pixart_pipelines()
    base = tf.images(o, "pixart")
    o.load_lora_weights(tf.prefixed("transformer", weights["a"]), adapter_name="a")
    assert o.get_list_adapters() == {"transformer": ["a"]} and o.get_active_adapters() == ["a"]
    ours = tf.images(o, "pixart")
    assert tf.changed(ours, base)
    tf.assert_close(ours, tf.images(merged(d, [(weights["a"], 1.0)]), "pixart"))

    o.load_lora_weights(tf.prefixed("transformer", weights["b"]), adapter_name="b")
    o.set_adapters(["a", "b"], [0.5, {"transformer": 1.5}])
    mixed = tf.images(o, "pixart")
    tf.assert_close(mixed, tf.images(merged(d, [(weights["a"], 0.5), (weights["b"], 1.5)]), "pixart"))
    o.fuse_lora()
    assert o.fused_loras == {"a", "b"}
    tf.assert_close(tf.images(o, "pixart"), mixed, atol=1e-4)
    o.unfuse_lora()
    tf.assert_close(tf.images(o, "pixart"), mixed, atol=1e-4)

    # saved in Diffusers' layout (transformer.<layer>.lora_A.weight), loaded back into a fresh pipeline
    from peft.utils import get_peft_model_state_dict

    o.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(o.transformer, adapter_name="b"),
                        transformer_lora_adapter_metadata={"r": 2, "lora_alpha": 3})
    _, back = tf.pixart_pipelines()
    back.load_lora_weights(tmp_path)
    state, meta = back.lora_state_dict(tmp_path, return_lora_metadata=True)
    assert all(k.startswith("transformer.") for k in state) and meta == {"transformer.r": 2, "transformer.lora_alpha": 3}
    tf.assert_close(tf.images(back, "pixart"), tf.images(merged(d, [(weights["b"], 1.5)]), "pixart"))


def test_unload_restores_the_exact_base_model_and_bad_input(weights):
    d, o = tf.pixart_pipelines()
    state = {k: v.clone() for k, v in o.transformer.state_dict().items()}
    base = tf.images(o, "pixart")
    o.load_lora_weights(tf.prefixed("transformer", weights["a"]), adapter_name="a")
    lora = tf.images(o, "pixart")
    tuners = tf.tuner_count(o)
    t5 = tf.random_lora(d.text_encoder, ("q", "v"), seed=3)
    with pytest.raises(ValueError, match=r"\['text_encoder'\]; PixArtAlphaPipeline takes LoRA into \['transformer'\]"):
        o.load_lora_weights({**tf.prefixed("transformer", weights["b"]), **tf.prefixed("text_encoder", t5)})
    with pytest.raises(ValueError, match="does not fit transformer"):
        o.load_lora_weights({"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(2, 5),
                             "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(24, 2)})
    assert tf.tuner_count(o) == tuners and o.get_list_adapters() == {"transformer": ["a"]}
    np.testing.assert_array_equal(tf.images(o, "pixart"), lora)
    o.disable_lora()
    np.testing.assert_array_equal(tf.images(o, "pixart"), base)
    o.enable_lora()
    o.unload_lora_weights()
    after = o.transformer.state_dict()
    assert tf.tuner_count(o) == 0 and list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())
    np.testing.assert_array_equal(tf.images(o, "pixart"), base)
