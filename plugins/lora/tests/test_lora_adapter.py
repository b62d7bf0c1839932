"""``LoraAdapter`` as a :class:`kernel.protocols.Adapter`: the contract suite, and use on a bare model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import lora_fixtures as lf  # noqa: E402
from lora_fixtures import single_thread  # noqa: E402,F401

import kernel_contracts  # noqa: E402
from kernel.protocols import Adapter  # noqa: E402
from kernel_lora import LoraAdapter  # noqa: E402

CONTRACT_COVERS = ["LoraAdapter"]
pytestmark = pytest.mark.usefixtures("single_thread")


def _unet():
    return lf.fx.unet(seed=0)[1]


def _adapter():
    return LoraAdapter(lf.random_lora(_unet(), seed=3), adapter_name="style")


def _inputs(model, batch_size, generator):
    return dict(sample=torch.randn(batch_size, 4, 16, 16, generator=generator), timestep=torch.tensor(10),
                encoder_hidden_states=torch.randn(batch_size, 7, 32, generator=generator))


class TestLoraAdapterContract(kernel_contracts.AdapterContract):
    component = staticmethod(_adapter)
    contract_options = {"contract_model": _unet, "contract_inputs": _inputs}


def test_lora_adapter_fits_the_protocol_and_is_registered():
    import kernel

    assert isinstance(_adapter(), Adapter)
    assert kernel.component("LoraAdapter") is LoraAdapter


@torch.no_grad()
def test_apply_scale_and_stacking_on_a_bare_model():
    model = _unet()
    x = _inputs(model, 2, torch.Generator().manual_seed(0))
    base = model(**x).sample
    a = LoraAdapter(lf.random_lora(model, seed=3), adapter_name="a")
    b = LoraAdapter(lf.random_lora(model, lf.UNET_TARGETS[:4], seed=4), adapter_name="b")
    a.apply(model, 1.0)
    one = model(**x).sample
    assert (one - base).abs().max() > 1e-2
    b.apply(model, 0.5)  # stacks on top of "a"
    both = model(**x).sample
    # through the UNet the LoRA deltas add up linearly only to first order; check the weights instead
    layer = model.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    assert layer.active_adapters == ["a", "b"] and layer.scaling == {"a": 1.0, "b": 0.5}
    assert (both - one).abs().max() > 1e-3
    with pytest.raises(ValueError, match="already loaded"):
        a.apply(model)
    a.remove(model)
    assert layer.active_adapters == ["b"]
    b.remove(model)
    assert isinstance(model.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q, torch.nn.Linear)
    torch.testing.assert_close(model(**x).sample, base, atol=0, rtol=0)


def test_delta_is_scale_times_up_down():
    model = _unet()
    weights = lf.random_lora(model, ("to_q",), rank=2, seed=1)
    kohya = lf.to_kohya(weights, "lora_unet_", {k[: -len(".lora_A.weight")]: 1.0 for k in weights if "lora_A" in k})
    delta = LoraAdapter(kohya).delta(model)
    path = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    expected = 0.5 * weights[f"{path}.lora_B.weight"] @ weights[f"{path}.lora_A.weight"]
    torch.testing.assert_close(delta[path], expected)


def test_adapter_rejects_pipeline_files_and_bad_names():
    model = _unet()
    weights = lf.random_lora(model, ("to_q",))
    with pytest.raises(ValueError, match="besides 'unet'"):
        LoraAdapter({**lf.prefixed("unet", weights), "text_encoder.x.lora_A.weight": torch.ones(1, 1),
                     "text_encoder.x.lora_B.weight": torch.ones(1, 1)})
    with pytest.raises(ValueError, match="adapter_name"):
        LoraAdapter(weights, adapter_name="")
    with pytest.raises(TypeError, match="mapping"):
        LoraAdapter([1, 2])
