"""TorchAoConfig on a tiny SD UNet, SD3 and Flux transformer: accuracy, memory, save/reload,
dequantize, Diffusers' own torchao quantization of the same weights, contracts and bad input."""

from __future__ import annotations

import pytest
import torch

import kernel
import kernel_contracts
from kernel_memory.testing import MODELS, TINY, model_inputs, relative_error, run, tiny_model
from kernel_quant_torchao import AoLinear, TorchAoConfig

CONTRACT_COVERS = ["TorchAoConfig", "torchao"]
#: Relative errors measured over 3 input seeds on the three models (max |q - ref| / max |ref|):
#: int8wo 0.007-0.019, int8dq 0.010-0.031 (float8wo 0.035-0.072, int4 groups of 8 0.09-0.23).
BOUND = {"int8wo": 0.03, "int8dq": 0.06}


def load(kind, folder, **kwargs):
    return kernel.component(TINY[kind][0]).from_pretrained(folder, **kwargs)


@pytest.mark.parametrize("quant_type", BOUND)
@pytest.mark.parametrize("kind", MODELS)
def test_close_to_full_precision_reload_and_dequantize(kind, quant_type, folders, tmp_path):
    x = model_inputs(kind)
    ref = run(load(kind, folders[kind]), x)
    q = load(kind, folders[kind], torch_dtype=torch.float32, quantization_config=TorchAoConfig(quant_type))
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    out = run(q, x)
    assert 0 < relative_error(out, ref) < BOUND[quant_type]
    q.save_pretrained(tmp_path / "q")
    again = load(kind, tmp_path / "q", torch_dtype=torch.float32)
    assert isinstance(again.proj_out if kind != "unet" else again.time_embedding.linear_1, AoLinear)
    assert torch.equal(run(again, x), out)
    again.dequantize()
    assert {p.dtype for p in again.parameters()} == {torch.float32}
    assert relative_error(run(again, x), ref) < BOUND[quant_type]


def test_memory_footprint_halves_the_linear_weights(folders):
    full = load("flux", folders["flux"], torch_dtype=torch.float16)
    q = load("flux", folders["flux"], torch_dtype=torch.float16, quantization_config=TorchAoConfig("int8wo"))
    linear = lambda m: sum(p.nelement() * p.element_size() for l in m.modules() if isinstance(l, torch.nn.Linear)
                           for n, p in l.named_parameters(recurse=False) if n != "bias")
    # int8 data is half of fp16; torchao adds one float32 scale per row, which on these tiny layers
    # (8 to 64 inputs) costs 10 %; on a real layer (3072 inputs) the ratio is 1.997.
    ratio = linear(full) / linear(q)
    assert 1.75 < ratio < 2.0
    assert full.get_memory_footprint() / q.get_memory_footprint() > 1.6


def test_same_outputs_as_diffusers_torchao(folders):
    diffusers = pytest.importorskip("diffusers")
    from torchao.quantization import Int8WeightOnlyConfig

    x = model_inputs("sd3")
    ours = load("sd3", folders["sd3"], torch_dtype=torch.float32, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
    theirs = diffusers.SD3Transformer2DModel.from_pretrained(
        folders["sd3"], torch_dtype=torch.float32, quantization_config=diffusers.TorchAoConfig(Int8WeightOnlyConfig()))
    assert torch.equal(run(ours, x), run(theirs, x))
    assert ours.config.quantization_config["quant_type"] == theirs.config.quantization_config.to_dict()["quant_type"]


def test_int4_and_float8_where_the_machine_runs_them(folders):
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    x = model_inputs("flux")
    ref = run(load("flux", folders["flux"]), x)
    q = load("flux", folders["flux"], torch_dtype=torch.float32,
             quantization_config=TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(8))))
    assert relative_error(run(q, x), ref) < 0.4  # measured 0.19-0.23: 16 levels per group of 8
    for name in ("int4wo", "float8wo"):
        try:
            q = load("flux", folders["flux"], torch_dtype=torch.float32, quantization_config=TorchAoConfig(name))
        except RuntimeError as err:  # int4wo needs CUDA or torchao's mslk; float8 needs fp8 support
            assert "torchao cannot run" in str(err)
            continue
        assert relative_error(run(q, x), ref) < 0.15  # float8wo measured 0.05-0.07


class TestInt8Contract(kernel_contracts.QuantizerContract):
    component = staticmethod(lambda: TorchAoConfig("int8wo"))
    contract_options = {"contract_model": lambda: tiny_model("flux"),
                        "contract_inputs": lambda model, batch_size, generator: model_inputs("flux", batch=batch_size)}


def test_bad_input(folders):
    with pytest.raises(ValueError, match="int8wo"):
        TorchAoConfig("int3wo")
    with pytest.raises(TypeError, match="torchao config"):
        TorchAoConfig(8)
    assert kernel.component("torchao") is TorchAoConfig and kernel.component("TorchAoConfig") is TorchAoConfig
