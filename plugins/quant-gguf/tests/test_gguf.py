"""GGUF: our torch dequantisation against the gguf package's, GGUF files written here loading into
tiny Flux and SD3 transformers and matching a model built from the dequantised weights, memory,
compute dtype, dequantize, contracts and bad input."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gguf
import kernel
import kernel_contracts
from kernel_memory.testing import model_inputs, relative_error, run, tiny_model
from kernel_quant_gguf import SUPPORTED, GGUFLinear, GGUFQuantizationConfig, from_gguf, read_gguf
from kernel_quant_gguf.dequant import QUANTIZED, dequantize

sys.path.insert(0, str(Path(__file__).parent))
from gguf_files import WIDE, blocks, wide_inputs, write_gguf  # noqa: E402

CONTRACT_COVERS = ["GGUFQuantizationConfig", "gguf"]
@pytest.mark.parametrize("quant_type", list(QUANTIZED))
def test_dequantisation_matches_the_gguf_package(quant_type):
    rng = np.random.default_rng(0)
    values = rng.standard_normal((6, 512)).astype(np.float32)
    raw = blocks(values, quant_type, rng)
    reference = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[quant_type])
    ours = dequantize(torch.from_numpy(raw), quant_type, (6, 512)).numpy()
    assert np.array_equal(ours, reference)


def wide_flux():
    torch.manual_seed(0)
    model = kernel.component("FluxTransformer2DModel")(**WIDE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def dequantised_reference(model, path):
    """``model`` with every tensor replaced by the gguf package's dequantisation of the file's tensor."""
    reader = gguf.GGUFReader(str(path))
    ref = copy.deepcopy(model)
    state = {t.name: torch.from_numpy(gguf.quants.dequantize(np.array(t.data), t.tensor_type).copy()).reshape(
        tuple(int(d) for d in reversed(t.shape))) for t in reader.tensors}
    ref.load_state_dict(state)
    return ref


@pytest.mark.parametrize("kind,quant_type", [("flux", "Q8_0"), ("sd3", "Q4_0"), ("sd3", "Q5_1"), ("wide", "Q4_K"),
                                             ("wide", "Q5_K")])
def test_gguf_file_matches_the_dequantised_reference(kind, quant_type, tmp_path):
    model = wide_flux() if kind == "wide" else tiny_model(kind)
    x = wide_inputs() if kind == "wide" else model_inputs(kind)
    model.save_pretrained(tmp_path / "config")
    write_gguf(tmp_path / "m.gguf", model.state_dict(), quant_type)
    q = from_gguf(type(model), tmp_path / "m.gguf", tmp_path / "config")
    layers = [m for m in q.modules() if isinstance(m, GGUFLinear)]
    assert layers and all(m.quant_type == quant_type and m.weight.dtype == torch.uint8 for m in layers)
    out = run(q, x)
    ref = run(dequantised_reference(model, tmp_path / "m.gguf"), x)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    if quant_type in ("Q8_0", "Q4_0"):  # real quantizers: close to the full-precision model too
        assert relative_error(out, run(model, x)) < (0.05 if quant_type == "Q8_0" else 0.5)
    block, size, _ = QUANTIZED[quant_type]  # the layers hold the file's bytes: size bytes per block weights
    assert sum(m.weight.numel() for m in layers) == sum(m.in_features * m.out_features for m in layers) * size / block


def test_compute_dtype_memory_and_dequantize(tmp_path):
    model = tiny_model("flux")
    model.save_pretrained(tmp_path / "config")
    write_gguf(tmp_path / "m.gguf", model.state_dict(), "Q8_0")
    q = from_gguf(type(model), tmp_path / "m.gguf", tmp_path / "config", torch_dtype=torch.bfloat16,
                  quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16))
    layer = q.transformer_blocks[0].attn.to_q
    assert isinstance(layer, GGUFLinear) and layer.compute_dtype == torch.bfloat16
    x = model_inputs("flux", dtype=torch.bfloat16)
    out = run(q, x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    # Q8_0: 34 bytes per 32 weights against 2 bytes per bf16 weight.
    bf16 = sum(m.in_features * m.out_features * 2 for m in q.modules() if isinstance(m, GGUFLinear))
    raw = sum(m.weight.numel() for m in q.modules() if isinstance(m, GGUFLinear))
    assert bf16 / raw == pytest.approx(64 / 34)
    q.dequantize()
    assert type(q.transformer_blocks[0].attn.to_q) is torch.nn.Linear
    assert q.transformer_blocks[0].attn.to_q.weight.dtype == torch.bfloat16
    assert torch.equal(run(q, x), out)  # the same bf16 weights, now stored dequantised


class TestQ8Contract(kernel_contracts.QuantizerContract):
    component = staticmethod(GGUFQuantizationConfig)
    contract_options = {"contract_model": lambda: tiny_model("flux"),
                        "contract_inputs": lambda model, batch_size, generator: model_inputs("flux", batch=batch_size)}


def test_bad_input(tmp_path):
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(tmp_path / "q6.gguf"), "kernel-test")
    raw = rng.integers(0, 256, size=(4, 210), dtype=np.uint8)
    writer.add_tensor("proj.weight", raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType.Q6_K)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(ValueError, match=r"Q6_K are not supported; supported: .*Q4_K.*Q5_K"):
        read_gguf(tmp_path / "q6.gguf")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="could not read"):
        read_gguf(tmp_path / "bad.gguf")
    model = tiny_model("flux")
    model.save_pretrained(tmp_path / "config")
    with pytest.raises(TypeError, match="GGUFQuantizationConfig"):
        from_gguf(type(model), tmp_path / "q6.gguf", tmp_path / "config", quantization_config=object())
    write_gguf(tmp_path / "m.gguf", model.state_dict(), "Q8_0")
    q = from_gguf(type(model), tmp_path / "m.gguf", tmp_path / "config")
    q.save_pretrained(tmp_path / "saved")
    with pytest.raises(ValueError, match="load from the .gguf file"):
        type(model).from_pretrained(tmp_path / "saved")
    assert set(SUPPORTED) >= {"Q4_0", "Q4_K", "Q5_K", "Q8_0"}
    assert kernel.component("gguf") is GGUFQuantizationConfig
