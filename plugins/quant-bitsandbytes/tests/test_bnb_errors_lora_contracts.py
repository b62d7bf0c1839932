"""The quantizer contract suite, LoRA (peft's bitsandbytes layers) on a quantized UNet, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

import kernel
import kernel_contracts
from kernel.protocols import Quantizer
from kernel_quant_bitsandbytes import BitsAndBytesConfig
from kernel_memory.testing import TINY, model_inputs, run, tiny_model

CONTRACT_COVERS = ["BitsAndBytesConfig", "bitsandbytes", "bitsandbytes_4bit", "bitsandbytes_8bit"]


def _flux():
    return tiny_model("flux")


def _inputs(model, batch_size, generator):
    return model_inputs("flux", batch=batch_size, seed=int(torch.randint(0, 1000, (1,), generator=generator)))


class TestInt8Contract(kernel_contracts.QuantizerContract):
    component = staticmethod(lambda: BitsAndBytesConfig(load_in_8bit=True))
    contract_options = {"contract_model": _flux, "contract_inputs": _inputs}


class TestNF4Contract(kernel_contracts.QuantizerContract):
    component = staticmethod(lambda: BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"))
    contract_options = {"contract_model": _flux, "contract_inputs": _inputs}


def test_registered_under_diffusers_names():
    for name in CONTRACT_COVERS:
        assert kernel.component(name) is BitsAndBytesConfig
    assert isinstance(BitsAndBytesConfig(load_in_8bit=True), Quantizer)


def test_config_round_trip_matches_diffusers_layout():
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype="bfloat16", llm_int8_skip_modules="proj_out")
    data = json.loads(config.to_json_string())
    assert data["quant_method"] == "bitsandbytes" and data["_load_in_4bit"] is True
    assert data["bnb_4bit_compute_dtype"] == "bfloat16" and data["llm_int8_skip_modules"] == ["proj_out"]
    assert BitsAndBytesConfig.from_dict(data) == config
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16,
                                          llm_int8_skip_modules=["proj_out"]).to_dict()
    assert {k: v for k, v in data.items()} == {k: theirs[k] for k in data}
    assert BitsAndBytesConfig.from_dict(theirs) == config


@torch.no_grad()
def test_lora_on_a_quantized_unet():
    """peft puts its bitsandbytes LoRA layers on the int8 UNet; the LoRA's effect matches the one on
    the full-precision UNet to the quantization error, and removing it restores the outputs."""
    from kernel_lora import LoraAdapter

    full = tiny_model("unet")
    q = BitsAndBytesConfig(load_in_8bit=True).quantize(tiny_model("unet"))
    g = torch.Generator().manual_seed(5)
    lora = {}
    for name, m in full.named_modules():
        if name.endswith(("to_q", "to_v", "ff.net.2")):
            lora[f"{name}.lora_A.weight"] = torch.randn(4, m.in_features, generator=g) * 0.3
            lora[f"{name}.lora_B.weight"] = torch.randn(m.out_features, 4, generator=g) * 0.3
    x = model_inputs("unet")
    base_full, base_q = run(full, x), run(q, x)
    for model in (full, q):
        LoraAdapter(lora, adapter_name="style").apply(model, 1.0)
    layer = q.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert type(layer).__module__ == "peft.tuners.lora.bnb"
    delta_full, delta_q = run(full, x) - base_full, run(q, x) - base_q
    assert delta_full.abs().max() > 0.05
    assert ((delta_q - delta_full).norm() / delta_full.norm()).item() < 0.05
    LoraAdapter(lora, adapter_name="style").remove(q)
    assert torch.equal(run(q, x), base_q)


def test_bad_input(tmp_path):
    cls = kernel.component(TINY["flux"][0])
    tiny_model("flux").save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="cannot both be True"):
        BitsAndBytesConfig(load_in_8bit=True, load_in_4bit=True)
    with pytest.raises(ValueError, match="nf4"):
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="int4")
    with pytest.raises(ValueError, match="bnb_4bit_compute_dtype"):
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype="float17")
    with pytest.raises(ValueError, match="load_in_8bit=True or load_in_4bit=True"):
        cls.from_pretrained(tmp_path / "m", quantization_config=BitsAndBytesConfig())
    with pytest.raises(ValueError, match="quant_method='None'"):
        cls.from_pretrained(tmp_path / "m", quantization_config={"load_in_8bit": True})
    with pytest.raises(TypeError, match="quantizer plugin.s config"):
        cls.from_pretrained(tmp_path / "m", quantization_config=8)
    with pytest.raises(ValueError, match="is not quantized"):
        cls.from_pretrained(tmp_path / "m").dequantize()
    q = cls.from_pretrained(tmp_path / "m", quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    with pytest.raises(ValueError, match="already quantized"):
        BitsAndBytesConfig(load_in_4bit=True).quantize(q)
    # A folder whose config.json names a quantization method no installed plugin provides.
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "quanto", "weights_dtype": "int8"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quanto"):
        cls.from_pretrained(tmp_path / "m")
