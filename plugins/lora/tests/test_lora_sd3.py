"""LoRA on SD3 pipelines (MMDiT + two CLIP text encoders) against Diffusers (the oracle)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import transformer_fixtures as tf  # noqa: E402
from transformer_fixtures import single_thread  # noqa: E402,F401

diffusers = tf.diffusers
pytestmark = pytest.mark.usefixtures("single_thread")
TEXT = ("text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def weights():
    """Two seeded LoRAs in the peft layout: {name: {component: layers}}."""
    d, _ = tf.sd3_pipelines()
    return {
        "a": {"transformer": tf.random_lora(d.transformer, tf.SD3_TARGETS, seed=0),
              "text_encoder": tf.random_lora(d.text_encoder, tf.TEXT_TARGETS, seed=1),
              "text_encoder_2": tf.random_lora(d.text_encoder_2, tf.TEXT_TARGETS, seed=2)},
        "b": {"transformer": tf.random_lora(d.transformer, tf.SD3_TARGETS[:4], rank=2, seed=3),
              "text_encoder_2": tf.random_lora(d.text_encoder_2, tf.TEXT_TARGETS[:2], seed=4)},
    }


@pytest.fixture(scope="module")
def files(weights, tmp_path_factory):
    """Each LoRA written by Diffusers' SD3 save_lora_weights: {name: folder}."""
    out = {}
    for name, parts in weights.items():
        folder = tmp_path_factory.mktemp(f"sd3-lora-{name}")
        diffusers.StableDiffusion3Pipeline.save_lora_weights(folder, **{f"{c}_lora_layers": v for c, v in parts.items()})
        out[name] = folder
    return out


@pytest.mark.parametrize("scale", [None, 0.5])
def test_transformer_and_text_encoder_lora_with_call_scale(files, scale):
    d, o = tf.sd3_pipelines()
    base = tf.images(o, "sd3")
    d.load_lora_weights(files["a"], adapter_name="a")
    o.load_lora_weights(files["a"], adapter_name="a")
    assert o.get_list_adapters() == d.get_list_adapters() == {c: ["a"] for c in ("transformer", *TEXT)}
    call = {} if scale is None else {"joint_attention_kwargs": {"scale": scale}}
    ours = tf.images(o, "sd3", **call)
    assert tf.changed(ours, base), "the LoRA should change the image"
    tf.assert_close(ours, tf.images(d, "sd3", **call))
    if scale is not None:
        unscaled = tf.images(o, "sd3")
        assert tf.changed(ours, unscaled, 1e-2), "the call scale should change the image"
        tf.assert_close(unscaled, tf.images(d, "sd3"))  # the scale is undone after the call


def test_text_encoder_lora_only_and_encode_prompt_scale(weights):
    d, o = tf.sd3_pipelines()
    layers = {**tf.prefixed("text_encoder", weights["a"]["text_encoder"]),
              **tf.prefixed("text_encoder_2", weights["a"]["text_encoder_2"])}
    base = tf.images(o, "sd3")
    d.load_lora_weights(dict(layers))
    o.load_lora_weights(dict(layers))
    assert o.get_list_adapters() == {"text_encoder": ["default_0"], "text_encoder_2": ["default_0"]}
    ours = tf.images(o, "sd3")
    assert tf.changed(ours, base)
    tf.assert_close(ours, tf.images(d, "sd3"))
    tf.assert_close(tf.images(o, "sd3", joint_attention_kwargs={"scale": 0.3}),
                    tf.images(d, "sd3", joint_attention_kwargs={"scale": 0.3}))

    args = dict(prompt="a cat", prompt_2=None, prompt_3=None, device="cpu", num_images_per_prompt=1,
                do_classifier_free_guidance=True, negative_prompt="blurry", max_sequence_length=16)
    plain = o.encode_prompt(**args)
    scaled = o.encode_prompt(**args, lora_scale=0.5)
    assert (scaled[0] - plain[0]).abs().max() > 1e-2 and (scaled[2] - plain[2]).abs().max() > 1e-2
    for ours_t, theirs_t in zip(scaled, d.encode_prompt(**args, lora_scale=0.5)):
        torch.testing.assert_close(ours_t, theirs_t, atol=1e-5, rtol=0)
    for before, after in zip(plain, o.encode_prompt(**args)):
        torch.testing.assert_close(after, before, atol=0, rtol=0)  # restored exactly


def test_two_adapters_mixed_and_fused(files):
    d, o = tf.sd3_pipelines()
    base = tf.images(o, "sd3")
    for name in ("a", "b"):
        d.load_lora_weights(files[name], adapter_name=name)
        o.load_lora_weights(files[name], adapter_name=name)
    assert o.get_active_adapters() == d.get_active_adapters() == ["b"]
    assert o.get_list_adapters() == d.get_list_adapters() == {"transformer": ["a", "b"], "text_encoder": ["a"],
                                                              "text_encoder_2": ["a", "b"]}
    tf.assert_close(tf.images(o, "sd3"), tf.images(d, "sd3"))
    mix = [0.6, {"transformer": 1.3, "text_encoder_2": 0.4}]
    d.set_adapters(["a", "b"], mix)
    o.set_adapters(["a", "b"], mix)
    mixed = tf.images(o, "sd3")
    tf.assert_close(mixed, tf.images(d, "sd3"))
    o.disable_lora()
    np.testing.assert_array_equal(tf.images(o, "sd3"), base)
    o.enable_lora()
    np.testing.assert_array_equal(tf.images(o, "sd3"), mixed)
    scaled = tf.images(o, "sd3", joint_attention_kwargs={"scale": 0.7})
    tf.assert_close(scaled, tf.images(d, "sd3", joint_attention_kwargs={"scale": 0.7}))

    o.fuse_lora(lora_scale=0.7)
    d.fuse_lora(lora_scale=0.7)
    assert o.fused_loras == {"a", "b"}
    fused = tf.images(o, "sd3")
    tf.assert_close(fused, scaled, atol=1e-4)
    tf.assert_close(fused, tf.images(d, "sd3"))
    o.unfuse_lora()
    d.unfuse_lora()
    d.set_adapters(["a", "b"], mix)  # Diffusers keeps the fused lora_scale on the adapters; ours are as before
    assert o.num_fused_loras == 0
    tf.assert_close(tf.images(o, "sd3"), mixed, atol=1e-4)
    o.delete_adapters("a")
    d.delete_adapters("a")
    assert o.get_list_adapters() == d.get_list_adapters() == {"transformer": ["b"], "text_encoder_2": ["b"]}
    tf.assert_close(tf.images(o, "sd3"), tf.images(d, "sd3"))


def test_unload_restores_the_exact_base_model(files):
    _, o = tf.sd3_pipelines()
    state = {k: v.clone() for k, v in o.transformer.state_dict().items()}
    te_state = {k: v.clone() for k, v in o.text_encoder_2.state_dict().items()}
    base = tf.images(o, "sd3")
    o.load_lora_weights(files["a"], adapter_name="a")
    o.load_lora_weights(files["b"], adapter_name="b")
    o.set_adapters(["a", "b"], [0.5, 1.0])
    o.unload_lora_weights()
    assert tf.tuner_count(o) == 0 and o.get_list_adapters() == {}
    after = o.transformer.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())
    assert all(torch.equal(o.text_encoder_2.state_dict()[k], v) for k, v in te_state.items())
    assert not hasattr(o.transformer, "peft_config") and not o.transformer._forward_pre_hooks
    np.testing.assert_array_equal(tf.images(o, "sd3"), base)
    np.testing.assert_array_equal(tf.images(o, "sd3", joint_attention_kwargs={"scale": 0.5}), base)


def test_save_lora_weights_round_trips_with_diffusers(files, tmp_path):
    from peft.utils import get_peft_model_state_dict

    d, o = tf.sd3_pipelines()
    o.load_lora_weights(files["b"], adapter_name="b")
    o.load_lora_weights(files["a"], adapter_name="a")
    layers = {c: get_peft_model_state_dict(getattr(o, c), adapter_name="a") for c in ("transformer", *TEXT)}
    o.save_lora_weights(tmp_path, **{f"{c}_lora_layers": v for c, v in layers.items()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pytorch_lora_weights.safetensors"]
    d.load_lora_weights(tmp_path)
    assert d.get_list_adapters() == {c: ["default_0"] for c in ("transformer", *TEXT)}
    tf.assert_close(tf.images(o, "sd3"), tf.images(d, "sd3"))
    state = o.lora_state_dict(tmp_path)
    assert isinstance(state, dict) and all(k.startswith(("transformer.", "text_encoder")) for k in state)

    # metadata (lora_alpha 8 for rank 4: twice the LoRA) written here is read by Diffusers, and the other way round
    meta = {"r": 4, "lora_alpha": 8, "target_modules": list(tf.SD3_TARGETS)}
    o.save_lora_weights(tmp_path / "ours", transformer_lora_layers=layers["transformer"], transformer_lora_adapter_metadata=meta)
    diffusers.StableDiffusion3Pipeline.save_lora_weights(tmp_path / "theirs", transformer_lora_layers=layers["transformer"],
                                                         transformer_lora_adapter_metadata=meta)
    d2, o2 = tf.sd3_pipelines()
    d2.load_lora_weights(tmp_path / "ours")
    o2.load_lora_weights(tmp_path / "theirs")
    assert o2.lora_state_dict(tmp_path / "theirs", return_lora_metadata=True)[1]["transformer.lora_alpha"] == 8
    doubled = tf.images(o2, "sd3")
    tf.assert_close(doubled, tf.images(d2, "sd3"))
    o2.set_adapters("default_0", 0.5)
    _, plain = tf.sd3_pipelines()
    plain.load_lora_weights(tf.prefixed("transformer", layers["transformer"]))
    tf.assert_close(tf.images(o2, "sd3"), tf.images(plain, "sd3"), atol=1e-5)


def test_text_encoder_3_and_other_models_are_refused(weights):
    """Diffusers takes no LoRA into SD3's T5; a file for it (or for a UNet) is an error that changes nothing."""
    d, o = tf.sd3_pipelines()
    o.load_lora_weights(tf.prefixed("transformer", weights["a"]["transformer"]), adapter_name="a")
    image, tuners = tf.images(o, "sd3"), tf.tuner_count(o)
    t5 = tf.random_lora(d.text_encoder_3, ("q", "v"), seed=5)
    with pytest.raises(ValueError, match=r"text_encoder_3.*takes LoRA into \['text_encoder', 'text_encoder_2', 'transformer'\]"):
        o.load_lora_weights({**tf.prefixed("transformer", weights["b"]["transformer"]),
                             **tf.prefixed("text_encoder_3", t5)}, adapter_name="t5")
    with pytest.raises(ValueError, match=r"\['unet'\]"):
        o.load_lora_weights(tf.prefixed("unet", weights["b"]["transformer"]), adapter_name="u")
    sai = {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": torch.ones(2, 32),
           "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": torch.ones(96, 2)}
    with pytest.raises(ValueError, match=r"kohya layout\) does not fit transformer .*joint_blocks_0"):
        o.load_lora_weights(sai, adapter_name="sai")
    assert tf.tuner_count(o) == tuners and o.get_list_adapters() == {"transformer": ["a"]}
    np.testing.assert_array_equal(tf.images(o, "sd3"), image)
