"""BitsAndBytesConfig on a tiny SD UNet, SD3 and Flux transformer: accuracy, memory, save/reload,
dequantize, and the same numbers as Diffusers' own bitsandbytes quantization of the same weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import kernel
from kernel_quant_bitsandbytes import BitsAndBytesConfig
from kernel_memory.testing import MODELS, TINY, linear_bytes, model_inputs, relative_error, run

sys.path.insert(0, str(Path(__file__).parent))
from bnb_helpers import MODES, diffusers_on_cpu  # noqa: E402

#: Relative errors of the whole tiny models' outputs (max |q - ref| / max |ref|), measured over 3
#: input seeds: int8 0.012-0.038, nf4 0.12-0.30, fp4 + double quantisation 0.15-0.47 (4-bit rounds
#: each weight by up to half a step of 16 levels, and random tiny models compound that through
#: every layer; one layer's error is checked in test_one_layer_error).
BOUND = {"int8": 0.05, "nf4": 0.35, "fp4_double": 0.5}


def load(kind, folder, **kwargs):
    return kernel.component(TINY[kind][0]).from_pretrained(folder, **kwargs)


def quantized(kind, folder, mode, **kwargs):
    kwargs.setdefault("torch_dtype", torch.float32)
    return load(kind, folder, quantization_config=BitsAndBytesConfig(**MODES[mode]), **kwargs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", MODELS)
def test_close_to_full_precision_and_reload_is_identical(kind, mode, folders, tmp_path):
    import bitsandbytes as bnb

    x = model_inputs(kind)
    ref = run(load(kind, folders[kind]), x)
    q = quantized(kind, folders[kind], mode)
    layer_type = bnb.nn.Linear8bitLt if mode == "int8" else bnb.nn.Linear4bit
    assert any(isinstance(m, layer_type) for m in q.modules())
    assert not any(type(m) is torch.nn.Linear for m in q.modules())  # every linear layer was swapped
    out = run(q, x)
    err = relative_error(out, ref)
    assert 0 < err < BOUND[mode], f"{kind} {mode}: relative error {err:.4f}"

    q.save_pretrained(tmp_path / "q")
    again = load(kind, tmp_path / "q", torch_dtype=torch.float32)  # no quantization_config: read from config.json
    assert again.config.quantization_config == q.config.quantization_config
    assert torch.equal(run(again, x), out)
    assert again.get_memory_footprint() == q.get_memory_footprint()


@pytest.mark.parametrize("mode,factor", [("int8", 2.0), ("nf4", 4.0), ("fp4_double", 4.0)])
@pytest.mark.parametrize("kind", MODELS)
def test_memory_footprint_shrinks_by_the_expected_factor(kind, mode, factor, folders):
    full = load(kind, folders[kind], torch_dtype=torch.float16)
    q = quantized(kind, folders[kind], mode, torch_dtype=torch.float16)
    # The linear layers' weights: int8 is half of fp16, packed 4-bit a quarter (the block scales
    # live beside the weight, as in Diffusers' count); biases stay fp16.
    weights = lambda m: sum(l.weight.nelement() * l.weight.element_size() for l in m.modules()
                            if isinstance(l, torch.nn.Linear))
    assert weights(full) == pytest.approx(factor * weights(q), rel=0.01)
    assert linear_bytes(full) / linear_bytes(q) > 0.9 * factor
    saved = full.get_memory_footprint() - q.get_memory_footprint()
    assert saved == weights(full) - weights(q)  # only the linear weights changed
    if kind == "flux":  # nearly all linear layers (the tiny SD3 has a large position table): the whole model shrinks too
        assert full.get_memory_footprint() / q.get_memory_footprint() > (1.8 if mode == "int8" else 3.0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", MODELS)
def test_same_outputs_as_diffusers_bitsandbytes(kind, mode, folders):
    diffusers = pytest.importorskip("diffusers")
    diffusers_on_cpu()
    x = model_inputs(kind)
    ours = quantized(kind, folders[kind], mode)
    theirs = getattr(diffusers, TINY[kind][0]).from_pretrained(
        folders[kind], quantization_config=diffusers.BitsAndBytesConfig(**MODES[mode]), torch_dtype=torch.float32)
    assert ours.get_memory_footprint() == theirs.get_memory_footprint()
    ref_state = theirs.state_dict()
    state = ours.state_dict()
    assert set(state) == set(ref_state)
    assert all(torch.equal(state[k], ref_state[k]) for k in state)
    assert torch.equal(run(ours, x), run(theirs, x))


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_quantized_folders_move_between_diffusers_and_us(mode, folders, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    diffusers_on_cpu()
    kind = "flux"
    x = model_inputs(kind)
    ours = quantized(kind, folders[kind], mode)
    out = run(ours, x)
    ours.save_pretrained(tmp_path / "ours")
    theirs = getattr(diffusers, TINY[kind][0]).from_pretrained(tmp_path / "ours", torch_dtype=torch.float32)
    theirs.save_pretrained(tmp_path / "theirs")
    back = load(kind, tmp_path / "theirs", torch_dtype=torch.float32)
    assert torch.equal(run(back, x), out)
    if mode == "nf4":  # Diffusers reassembles the 4-bit state exactly (its 8-bit reload re-quantizes the int8 values)
        assert torch.equal(run(theirs, x), out)


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_dequantize_restores_linear_layers(mode, folders):
    kind = "sd3"
    x = model_inputs(kind)
    q = quantized(kind, folders[kind], mode)
    out = run(q, x)
    ref = run(load(kind, folders[kind]), x)
    assert q.dequantize() is q
    assert all(type(m) is torch.nn.Linear for m in q.modules() if isinstance(m, torch.nn.Linear))
    assert {p.dtype for p in q.parameters()} == {torch.float32}
    assert "quantization_config" not in q.config and getattr(q, "hf_quantizer", None) is None
    deq = run(q, x)
    # The dequantized weights are the quantized ones: 4-bit matmuls dequantize the same way, so the
    # output stays that of the quantized model; int8 also rounds the activations, which is now gone.
    assert relative_error(deq, out) < (1e-5 if mode == "nf4" else 0.02)
    assert relative_error(deq, ref) < BOUND[mode]
    with pytest.raises(ValueError, match="not quantized"):
        q.dequantize()


def test_skip_modules_and_keep_in_fp32_stay_full_precision(folders):
    import bitsandbytes as bnb

    q = load("sd3", folders["sd3"], torch_dtype=torch.float32,
             quantization_config=BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["proj_out", "norm_out"]))
    assert type(q.proj_out) is torch.nn.Linear and q.proj_out.weight.dtype == torch.float32
    assert type(q.norm_out.linear) is torch.nn.Linear  # "norm_out" names a module above the layer
    assert isinstance(q.transformer_blocks[0].attn.to_q, bnb.nn.Linear8bitLt)

    cls = kernel.component("SD3Transformer2DModel")
    keep = type("KeepContext", (cls,), {"_keep_in_fp32_modules": ["context_embedder"]})
    q = keep.from_pretrained(folders["sd3"], torch_dtype=torch.float16,
                             quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    assert type(q.context_embedder) is torch.nn.Linear and q.context_embedder.weight.dtype == torch.float32
    assert q.pos_embed.proj.weight.dtype == torch.float16  # torch_dtype for the other unquantized layers


def test_options_reach_the_layers(folders):
    q = load("flux", folders["flux"], quantization_config=BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=2.5))
    layer = q.transformer_blocks[0].attn.to_q
    assert layer.state.threshold == 2.5 and not layer.state.has_fp16_weights
    assert q.x_embedder.bias.dtype == torch.float16  # Diffusers' default dtype for the rest

    q = load("flux", folders["flux"], quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True))
    layer = q.transformer_blocks[0].attn.to_q
    assert layer.compute_dtype == torch.bfloat16 and layer.weight.quant_state.nested
    assert q.config.quantization_config["bnb_4bit_compute_dtype"] == "bfloat16"
    out = run(q, model_inputs("flux", dtype=torch.float16))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_threshold_changes_the_outlier_path(folders):
    x = model_inputs("flux")
    outs = [run(load("flux", folders["flux"], torch_dtype=torch.float32,
                     quantization_config=BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=t)), x)
            for t in (0.0, 6.0, 0.5)]
    assert not torch.equal(outs[0], outs[2])  # at 0.5 nearly every activation column is an outlier


@pytest.mark.parametrize("mode,bound", [("int8", 0.01), ("nf4", 0.12), ("fp4_double", 0.15)])
def test_one_layer_error(mode, bound):
    """One linear layer with normal weights: relative RMS error of its output (measured: int8 0.005,
    nf4 0.09, fp4 0.11)."""
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(256, 128))
    x = torch.randn(16, 256)
    ref = layer(x).detach()
    BitsAndBytesConfig(**MODES[mode]).quantize(layer)
    with torch.no_grad():
        out = layer(x)
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < bound, err
