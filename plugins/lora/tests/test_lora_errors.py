"""Bad LoRA input is a clear error and leaves the pipeline exactly as it was."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import lora_fixtures as lf  # noqa: E402
from lora_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def sd():
    """Our SD pipeline with adapter "a" loaded, its image, and the LoRA weights."""
    d, o = lf.pipelines()
    unet, te = lf.random_lora(d.unet, seed=0), lf.random_lora(d.text_encoder, lf.TEXT_TARGETS, seed=1)
    weights = {**lf.prefixed("unet", unet), **lf.prefixed("text_encoder", te)}
    o.load_lora_weights(weights, adapter_name="a")
    return o, lf.images(o), weights


def _unchanged(pipe, image, tuners):
    assert lf.tuner_count(pipe) == tuners
    assert pipe.get_list_adapters() == {"unet": ["a"], "text_encoder": ["a"]}
    assert pipe.get_active_adapters() == ["a"]
    np.testing.assert_array_equal(lf.images(pipe), image)


def _xl_lora():
    d, _ = lf.pipelines(xl=True)
    return {**lf.prefixed("unet", lf.random_lora(d.unet, seed=5)),
            **lf.prefixed("text_encoder", lf.random_lora(d.text_encoder, lf.TEXT_TARGETS, seed=6)),
            **lf.prefixed("text_encoder_2", lf.random_lora(d.text_encoder_2, lf.TEXT_TARGETS, seed=7))}


def test_unknown_layout_names_the_file_and_changes_nothing(sd, tmp_path):
    from safetensors.torch import save_file

    pipe, image, _ = sd
    tuners = lf.tuner_count(pipe)
    file = tmp_path / "mystery.safetensors"
    save_file({"model.diffusion_model.input_blocks.1.weight": torch.ones(2, 2), "foo.bias": torch.ones(2)}, str(file))
    with pytest.raises(ValueError, match=r"mystery\.safetensors.*match no LoRA layout") as err:
        pipe.load_lora_weights(file, adapter_name="b")
    assert "lora_A" in str(err.value) and "kohya" in str(err.value)  # says what was expected
    _unchanged(pipe, image, tuners)


def test_unread_keys_are_an_error_not_a_partial_load(sd):
    pipe, image, weights = sd
    tuners = lf.tuner_count(pipe)
    bad = dict(weights)
    bad["unet.down_blocks.1.attentions.0.norm.some_extra.weight"] = torch.ones(3)
    with pytest.raises(ValueError, match="some_extra"):
        pipe.load_lora_weights(bad, adapter_name="b")
    dora = {**weights, "unet.down_blocks.1.attentions.0.proj_in.lora_magnitude_vector": torch.ones(8)}
    with pytest.raises(ValueError, match="DoRA"):
        pipe.load_lora_weights(dora, adapter_name="b")
    half = {k: v for k, v in weights.items() if not k.endswith("attn1.to_q.lora_B.weight")}
    with pytest.raises(ValueError, match="no up"):
        pipe.load_lora_weights(half, adapter_name="b")
    kohya = {"lora_unet_down_blocks_1_attentions_0_proj_in.hada_w1_a": torch.ones(2, 2)}
    with pytest.raises(ValueError, match="LoHa"):
        pipe.load_lora_weights(kohya, adapter_name="b")
    with pytest.raises(ValueError, match="empty"):
        pipe.load_lora_weights({}, adapter_name="b")
    _unchanged(pipe, image, tuners)


def test_duplicate_adapter_name(sd):
    pipe, image, weights = sd
    tuners = lf.tuner_count(pipe)
    with pytest.raises(ValueError, match="'a' is already in use"):
        pipe.load_lora_weights(weights, adapter_name="a")
    _unchanged(pipe, image, tuners)


def test_set_adapters_rejects_unknown_names_and_wrong_weights(sd):
    pipe, image, _ = sd
    tuners = lf.tuner_count(pipe)
    with pytest.raises(ValueError, match=r"\['nope'\] are not loaded.*\['a'\]"):
        pipe.set_adapters(["a", "nope"])
    with pytest.raises(ValueError, match="2 entries for 1 adapter_names"):
        pipe.set_adapters(["a"], adapter_weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="components.*vae"):
        pipe.set_adapters("a", adapter_weights={"vae": 0.5})
    with pytest.raises(TypeError, match="adapter weight"):
        pipe.set_adapters("a", adapter_weights="strong")
    with pytest.raises(TypeError, match="weight for unet"):
        pipe.set_adapters("a", adapter_weights={"unet": {"down": {"block_0": [1.0]}}})
    with pytest.raises(ValueError, match="not loaded"):
        pipe.delete_adapters("nope")
    with pytest.raises(ValueError, match="not loaded"):
        pipe.fuse_lora(adapter_names=["nope"])
    _unchanged(pipe, image, tuners)


def test_lora_for_another_architecture(sd):
    """An SDXL LoRA on SD 1.5: components it lacks, then layers that do not fit."""
    pipe, image, _ = sd
    tuners = lf.tuner_count(pipe)
    xl = _xl_lora()
    with pytest.raises(ValueError, match=r"text_encoder_2.*another architecture"):
        pipe.load_lora_weights(xl, adapter_name="xl")
    only_unet = {k: v for k, v in xl.items() if k.startswith("unet.")}
    with pytest.raises(ValueError, match=r"does not fit unet.*needs down .* the LoRA has .*another model"):
        pipe.load_lora_weights(only_unet, adapter_name="xl")
    _unchanged(pipe, image, tuners)


def test_a_failing_component_leaves_the_others_untouched(sd):
    """The UNet part fits, the text-encoder part does not: nothing is loaded anywhere."""
    from kernel_clip.testing import tiny_clip_text_model

    pipe, image, weights = sd
    tuners = lf.tuner_count(pipe)
    wider = tiny_clip_text_model(lf.fx.tokenizer("sd1"), hidden_size=64)
    mixed = {**{k: v for k, v in weights.items() if k.startswith("unet.")},
             **lf.prefixed("text_encoder", lf.random_lora(wider, lf.TEXT_TARGETS))}
    with pytest.raises(ValueError, match="does not fit text_encoder"):
        pipe.load_lora_weights(mixed, adapter_name="b")
    renamed = {k.replace("unet.down_blocks.1", "unet.down_blocks.7"): v for k, v in weights.items()}
    with pytest.raises(ValueError, match=r"name no layer of the model: 'down_blocks\.7"):
        pipe.load_lora_weights(renamed, adapter_name="b")
    _unchanged(pipe, image, tuners)


def test_bad_arguments(sd, tmp_path):
    pipe, image, weights = sd
    tuners = lf.tuner_count(pipe)
    with pytest.raises(ValueError, match="hotswap"):
        pipe.load_lora_weights(weights, adapter_name="b", hotswap=True)
    with pytest.raises(TypeError, match="unexpected keyword"):
        pipe.load_lora_weights(weights, adapter_name="b", fancy=True)
    with pytest.raises(TypeError, match="state dict"):
        pipe.load_lora_weights(42)
    with pytest.raises(FileNotFoundError, match="no LoRA weights"):
        pipe.load_lora_weights(tmp_path)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        pipe.load_lora_weights(tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match="nothing to save"):
        pipe.save_lora_weights(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    _unchanged(pipe, image, tuners)
