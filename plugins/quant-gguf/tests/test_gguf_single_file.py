"""GGUF files in the original layouts (BFL's FLUX.1, SAI's SD3, as city96 shares them) through
``Model.from_single_file``, against Diffusers 0.42.1's ``from_single_file(..., quantization_config=
GGUFQuantizationConfig())`` and against the file dequantised by the gguf package; GGUF tensors through the
converters' row splits; defaults and bad input.

The files are written here: tiny Diffusers models mapped to the original layouts by kernel-single-file's
test writers (``sf_fixtures``, written independently of its converters), then quantized by ``gguf_files``.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import gguf
import kernel
from kernel_memory.testing import TINY, model_inputs, relative_error, run
from kernel_quant_gguf import SUPPORTED, GGUFLinear, GGUFQuantizationConfig, GGUFTensor, from_gguf
from kernel_quant_gguf.dequant import QUANTIZED

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[2] / "single-file" / "tests"))
import sf_fixtures as fx  # noqa: E402
from gguf_files import WIDE, wide_inputs, write_gguf  # noqa: E402

diffusers = pytest.importorskip("diffusers")

#: SD3 as in kernel-single-file's tests: dual attention in block 0 and qk norms (SD3.5 medium's layout); the
#: pooled width (72) fits no block, so the file mixes quantized and F32 weights.
SD3 = dict(sample_size=32, patch_size=1, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
           caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=72, out_channels=16,
           pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm")
MODELS = {"sd3": ("SD3Transformer2DModel", SD3, fx.mmdit), "flux": ("FluxTransformer2DModel", TINY["flux"][1], fx.bfl_flux),
          "wide": ("FluxTransformer2DModel", WIDE, fx.bfl_flux)}


def sd3_inputs(dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 16, 8, 8, generator=g).to(dtype),
                encoder_hidden_states=torch.randn(1, 5, 32, generator=g).to(dtype),
                pooled_projections=torch.randn(1, 72, generator=g).to(dtype), timestep=torch.tensor([500.0]))


def inputs(kind: str, dtype=torch.float32) -> dict:
    if kind == "sd3":
        return sd3_inputs(dtype)
    x = wide_inputs() if kind == "wide" else model_inputs("flux")
    return {k: v.to(dtype) if v.is_floating_point() and k not in ("timestep", "guidance") else v for k, v in x.items()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Each kind: (Diffusers model folder, original-layout state dict)."""
    root = tmp_path_factory.mktemp("gguf-single-file")
    out = {}
    for kind, (name, config, writer) in MODELS.items():
        torch.manual_seed(0)
        model = fx._seeded(getattr(diffusers, name)(**config), 0)
        model.save_pretrained(root / kind)
        original: dict = {}
        writer(model.state_dict(), dict(model.config), original, "")  # unprefixed, as city96's files
        out[kind] = root / kind, original
    return out


class FluxWidth(TorchFunctionMode):
    """Diffusers' FLUX converter splits each single block's fused ``linear1`` with FLUX.1's width (3072) written
    in; under this mode that one split uses the tiny model's width. Everything else is Diffusers' own path."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.split, torch.Tensor.split) and isinstance(args[1], (list, tuple)) and \
                list(args[1]) == [3072, 3072, 3072, 12288]:
            args = (args[0], [self.width] * 3 + [4 * self.width], *args[2:])
        return func(*args, **(kwargs or {}))


def diffusers_gguf(kind: str, folder: Path, file: Path, monkeypatch=None, **kwargs):
    """Diffusers' ``from_single_file`` of a GGUF file. With ``monkeypatch``, its block decoders work in float32
    (out of the box they decode in float16: ``d * q`` rounded to half precision, where ggml and the gguf
    package, like us, multiply in float32)."""
    from diffusers.quantizers.gguf import utils

    if monkeypatch is not None:
        for quant_type, fn in list(utils.dequantize_functions.items()):
            monkeypatch.setitem(utils.dequantize_functions, quant_type, functools.partial(fn, dtype=torch.float32))
    cls = getattr(diffusers, MODELS[kind][0])
    config = MODELS[kind][1]
    kwargs.setdefault("quantization_config", diffusers.GGUFQuantizationConfig(compute_dtype=torch.float32))
    with FluxWidth(config["attention_head_dim"] * config["num_attention_heads"]) if kind != "sd3" else nullcontext():
        return cls.from_single_file(str(file), config=str(folder), **kwargs)


def dequantised_file(path: Path, out: Path) -> Path:
    """The GGUF file's tensors decoded by the gguf package, as an original-layout safetensors file."""
    from safetensors.torch import save_file

    reader = gguf.GGUFReader(str(path))
    save_file({t.name: torch.from_numpy(gguf.quants.dequantize(np.array(t.data), t.tensor_type).copy()).reshape(
        tuple(int(d) for d in reversed(t.shape))).float().contiguous() for t in reader.tensors}, str(out))
    return out


def ours(kind: str, folder: Path, file: Path, **kwargs):
    return kernel.component(MODELS[kind][0]).from_single_file(str(file), config=str(folder), **kwargs)


@pytest.mark.parametrize("kind,quant_type", [("sd3", "Q8_0"), ("sd3", "Q4_0"), ("flux", "Q8_0"), ("flux", "Q4_0"),
                                             ("wide", "Q4_K"), ("sd3", "BF16")])
def test_original_layout_gguf_matches_diffusers(made, kind, quant_type, tmp_path, monkeypatch):
    folder, original = made[kind]
    file = tmp_path / f"{kind}-{quant_type}.gguf"
    write_gguf(file, original, quant_type)
    model = ours(kind, folder, file, quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, GGUFLinear)}
    x = inputs(kind)
    out = run(model, x)
    if quant_type in QUANTIZED:
        # the fused qkv rows were split into GGUF layers of the file's type, holding the file's bytes
        assert {"transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_k_proj"} <= set(layers)
        assert all(m.quant_type == quant_type and m.weight.dtype == torch.uint8 for m in layers.values())
        block, size, _ = QUANTIZED[quant_type]
        assert sum(m.weight.numel() for m in layers.values()) * block == size * sum(
            m.in_features * m.out_features for m in layers.values())
    else:
        assert not layers  # BF16 tensors load as they are (Diffusers decodes them at every call)
    exact = run(diffusers_gguf(kind, folder, file, monkeypatch), x)
    assert relative_error(out, exact) <= 1e-5  # measured 0.0
    monkeypatch.undo()
    as_shipped = run(diffusers_gguf(kind, folder, file), x)
    assert relative_error(out, as_shipped) <= 1e-3  # Diffusers' float16 decoding; measured 0 to 2.4e-4
    reference = ours(kind, folder, dequantised_file(file, tmp_path / "dequantised.safetensors"))
    assert relative_error(out, run(reference, x)) <= 1e-5  # measured 0 to 1.9e-7


def test_default_config_bf16_and_diffusers_names(made, tmp_path):
    folder, original = made["flux"]
    file = tmp_path / "flux-Q8_0.gguf"
    write_gguf(file, original, "Q8_0")
    # No quantization_config: GGUFQuantizationConfig() (Diffusers 0.42.1 fails here on the blocks' byte shapes).
    model = ours("flux", folder, file)
    assert isinstance(model.transformer_blocks[0].attn.to_q, GGUFLinear) and model.dtype == torch.float32
    with pytest.raises(ValueError, match="expected shape"):
        diffusers_gguf("flux", folder, file, quantization_config=None)
    out = run(model, inputs("flux"))
    # compute_dtype=bfloat16: torch_dtype defaults to it (as in Diffusers), each layer decodes to bf16
    bf16 = ours("flux", folder, file, quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16))
    assert bf16.transformer_blocks[0].norm1.linear.compute_dtype == torch.bfloat16
    assert bf16.x_embedder.weight.dtype == torch.bfloat16
    theirs = diffusers_gguf("flux", folder, file,
                            quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=torch.bfloat16))
    x = inputs("flux", torch.bfloat16)
    assert relative_error(run(bf16, x), run(theirs, x)) <= 2e-2  # bf16 rounding; measured 0.0063 (Diffusers decodes
    #                                                                 in float16 first)
    # the same weights written with Diffusers' names (from_gguf): the same blocks, row for row
    native = tmp_path / "diffusers-names.gguf"
    write_gguf(native, diffusers.FluxTransformer2DModel.from_pretrained(folder).state_dict(), "Q8_0")
    assert torch.equal(run(from_gguf(type(model), native, folder), inputs("flux")), out)


def test_pipeline_with_a_gguf_transformer(made, tmp_path):
    """``kernel.load(file.gguf, config=folder)``: the transformer from the file (GGUF layers), the rest from the folder."""
    folder = fx.mmdit_folder(tmp_path / "sd3", "sd3", t5=False)
    transformer = diffusers.SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer")
    original: dict = {}
    fx.mmdit(transformer.state_dict(), dict(transformer.config), original, "")
    write_gguf(tmp_path / "sd3.gguf", original, "Q8_0")
    pipe = kernel.load(str(tmp_path / "sd3.gguf"), config=str(folder), text_encoder_3=None, tokenizer_3=None)
    assert isinstance(pipe.transformer.transformer_blocks[0].attn.to_q, GGUFLinear)
    theirs = diffusers.StableDiffusion3Pipeline.from_pretrained(
        folder, text_encoder_3=None, tokenizer_3=None,
        transformer=diffusers.SD3Transformer2DModel.from_single_file(
            str(tmp_path / "sd3.gguf"), config=str(folder), subfolder="transformer",
            quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=torch.float32)))
    args = dict(prompt="a cat", num_inference_steps=2, height=32, width=32)
    fx.assert_close(fx.run(pipe, **args), fx.run(theirs, **args), atol=2e-3)  # Diffusers decodes in float16


def test_gguf_tensors_split_by_rows_only():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((6, 64)).astype(np.float32)
    raw = torch.from_numpy(gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q4_0))
    t = GGUFTensor(raw, "Q4_0")
    assert t.logical_shape == (6, 64) and t.shape == (6, 36) and "Q4_0" in repr(t)
    parts = torch.split(t, [2, 4], dim=0)
    assert all(isinstance(p, GGUFTensor) and p.quant_type == "Q4_0" for p in parts)
    assert torch.equal(parts[1].dequantize(), t.dequantize()[2:])
    first, second = t.chunk(2, dim=0)
    swapped = torch.cat([second, first], dim=0)  # the converters' AdaLN shift/scale swap
    assert isinstance(swapped, GGUFTensor) and torch.equal(swapped.dequantize()[:3], t.dequantize()[3:])
    assert isinstance(t[1:3], GGUFTensor) and isinstance(t.to("cpu"), GGUFTensor)
    for bad in (lambda: t.T, lambda: t.float(), lambda: t.to(torch.float16), lambda: t[:, :18],
                lambda: torch.split(t, 18, dim=1), lambda: torch.cat([t, t.raw()]), lambda: t.view(torch.int8),
                lambda: torch.cat([t, GGUFTensor(torch.zeros(6, 68, dtype=torch.uint8), "Q8_0")])):
        with pytest.raises(TypeError, match="GGUF"):
            bad()
    before = t.raw().clone()
    for in_place in (lambda: t.add_(1), lambda: t.zero_(), lambda: t.copy_(before)):
        with pytest.raises(TypeError, match="GGUF"):
            in_place()
    assert torch.equal(t.raw(), before)  # refused before touching the bytes
    with pytest.raises(ValueError, match="not a supported GGUF block type; supported: Q8_0"):
        GGUFTensor(raw, "Q6_K")
    with pytest.raises(ValueError, match="uint8 rows of 18-byte blocks"):
        GGUFTensor(torch.zeros(6, 35, dtype=torch.uint8), "Q4_0")


def test_checkpoint_opens_gguf_files(made, tmp_path):
    from kernel.checkpoints import Checkpoint, detect

    folder, original = made["flux"]
    file = tmp_path / "no-suffix"  # recognised by its magic bytes, not its name
    write_gguf(file, original, "Q4_0")
    checkpoint = Checkpoint(file)
    assert checkpoint.shapes == {k: tuple(v.shape) for k, v in original.items()}  # decoded shapes, no data read
    assert detect(checkpoint) == "flux-dev" and isinstance(checkpoint.quantization_config, GGUFQuantizationConfig)
    qkv = checkpoint["double_blocks.0.img_attn.qkv.weight"]
    assert isinstance(qkv, GGUFTensor) and qkv.logical_shape == (96, 32)
    assert checkpoint["double_blocks.0.img_attn.qkv.bias"].dtype == torch.float32
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(file.read_bytes()[:200])
    with pytest.raises(ValueError, match="could not read .*truncated.gguf as a GGUF file"):
        Checkpoint(truncated)


def test_bad_input(made, tmp_path):
    folder, original = made["sd3"]
    file = tmp_path / "q6k.gguf"
    writer = gguf.GGUFWriter(str(file), "kernel-test")
    for key, t in original.items():
        if key == "joint_blocks.0.x_block.attn.qkv.weight":  # one unsupported block type in the file
            raw = np.zeros((t.shape[0], t.shape[1] // 256 * 210 or 210), dtype=np.uint8)
            writer.add_tensor(key, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType.Q6_K)
        else:
            writer.add_tensor(key, t.float().numpy())
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(ValueError, match=r"Q6_K are not supported; supported: " + ", ".join(SUPPORTED)):
        ours("sd3", folder, file)
    good = tmp_path / "q8.gguf"
    write_gguf(good, original, "Q8_0")

    class OtherConfig:
        quant_method = "bitsandbytes"

        def quantizer(self, pre_quantized=False):
            raise AssertionError("not reached")

    with pytest.raises(TypeError, match="holds gguf tensors: quantization_config must be a GGUFQuantizationConfig, "
                                        "got OtherConfig"):
        ours("sd3", folder, good, quantization_config=OtherConfig())
    wrong = tmp_path / "wrong"  # a config whose text width differs from the file's (decoded) Q8_0 weight
    diffusers.SD3Transformer2DModel(**dict(SD3, joint_attention_dim=64)).save_pretrained(wrong)
    with pytest.raises(ValueError, match=r"context_embedder.weight: \(32, 32\) in the file, \(32, 64\) in the config"):
        ours("sd3", wrong, good)
