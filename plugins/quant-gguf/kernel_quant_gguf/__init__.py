"""GGUF weights: ``GGUFQuantizationConfig`` (Diffusers' name) and ``.gguf`` files.

    state, types = read_gguf("flux1-dev-Q4_K_S.gguf")          # raw blocks, read with the gguf package
    model = from_gguf(FluxTransformer2DModel, "transformer.gguf", config="folder/transformer",
                      quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16))

A linear layer whose weight is quantized in the file becomes a :class:`GGUFLinear`: it keeps the
raw blocks (``uint8``, as many bytes as the file holds) and dequantises them to ``compute_dtype``
each time it runs (:mod:`kernel_quant_gguf.dequant`), so only one layer's weights are ever in full
precision. Quantized tensors of other layers are dequantised once while loading; ``F32`` /
``F16`` / ``BF16`` tensors load as they are. The file's tensors must carry the model's state-dict
names (Diffusers' names); files in an original layout (BFL's Flux, SAI's SD3) go through the
single-file converters first. A type outside :data:`SUPPORTED` is an error that lists them.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kernel_memory import LinearQuantizer, QuantizationConfig, as_dtype
from kernel_quant_gguf.dequant import QUANTIZED, SUPPORTED, UNQUANTIZED, dequantize, quantize_q8_0


class GGUFQuantizationConfig(QuantizationConfig):
    """Load GGUF-quantized weights; ``compute_dtype`` is what each layer dequantises to (float32 by default)."""

    quant_method = "gguf"

    def __init__(self, compute_dtype: Any = None, **_: Any):
        self.compute_dtype = as_dtype(compute_dtype, "compute_dtype") or torch.float32

    def quantizer(self, pre_quantized: bool = False, types: dict | None = None) -> "GGUFQuantizer":
        return GGUFQuantizer(self, pre_quantized=True, types=types)

    #: For the contract suite: Q8_0 of float32 weights (34 bytes per 32 weights).
    tolerance = 0.05
    compression = 3.0


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, tuple[int, ...]]]]:
    """The tensors of a ``.gguf`` file: ``(state, types)`` where ``state[key]`` is the raw ``uint8`` rows of a
    quantized tensor (or the tensor itself when unquantized) and ``types[key] = (quant type, shape)``."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - gguf raises several kinds on a bad file
        raise ValueError(f"could not read {path} as a GGUF file ({type(err).__name__}: {err})") from None
    unsupported = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type.name not in SUPPORTED})
    if unsupported:
        raise ValueError(f"{path}: GGUF quant type(s) {', '.join(unsupported)} are not supported; supported: "
                         f"{', '.join(SUPPORTED)}")
    state, types = {}, {}
    for t in reader.tensors:
        name, shape = t.tensor_type.name, tuple(int(d) for d in reversed(t.shape))
        data = np.array(t.data)
        if name == "BF16":
            tensor = torch.from_numpy(data.view(np.int16)).view(torch.bfloat16).reshape(shape)
        elif name in UNQUANTIZED:
            tensor = torch.from_numpy(data).reshape(shape)
        else:
            tensor = torch.from_numpy(data)
        state[t.name] = tensor
        types[t.name] = (name, shape)
    return state, types


class GGUFLinear(nn.Linear):
    """A linear layer holding GGUF blocks, dequantised to ``compute_dtype`` at every call."""

    quant_type: str = ""
    compute_dtype: torch.dtype = torch.float32

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.weight, self.quant_type, (self.out_features, self.in_features), self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return F.linear(x.to(self.compute_dtype), self.dequantized_weight(), bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, quant_type={self.quant_type}"


class GGUFQuantizer(LinearQuantizer):
    layer_types = (GGUFLinear,)

    def __init__(self, config: GGUFQuantizationConfig, pre_quantized: bool = True, types: dict | None = None):
        super().__init__(config, pre_quantized=True)
        self.types = dict(types or {})

    def quantize(self, model: nn.Module) -> nn.Module:
        """Quantize a loaded model's linear layers to Q8_0 (the GGUF type with an exact, simple quantizer;
        the others come from .gguf files)."""
        self.types = {f"{n}.weight": ("Q8_0", (m.out_features, m.in_features)) for n, m in model.named_modules()
                      if isinstance(m, nn.Linear) and not isinstance(m, GGUFLinear) and m.in_features % 32 == 0}
        return super().quantize(model)

    def _quantized(self, key: str) -> bool:
        return self.types.get(key, ("F32",))[0] in QUANTIZED

    def targets(self, model: nn.Module) -> list[str]:
        if not self.types:
            raise ValueError("GGUF weights load from the .gguf file (from_gguf); a saved folder does not hold their "
                             "block types")
        return [n for n in super().targets(model) if self._quantized(f"{n}.weight")]

    def make_layer(self, linear: nn.Linear) -> nn.Module:
        with torch.device("meta"):
            layer = GGUFLinear(linear.in_features, linear.out_features, linear.bias is not None)
        return layer.requires_grad_(False).train(linear.training)

    def load(self, model: nn.Module, state: dict[str, torch.Tensor], device: Any) -> list[str]:
        prefixes = tuple(f"{n}." for n in self.swapped)
        for key in list(state):  # quantized tensors outside the swapped layers: dequantised once, here
            if self._quantized(key) and not key.startswith(prefixes):
                quant_type, shape = self.types[key]
                state[key] = dequantize(state.pop(key).to(device), quant_type, shape, self.dtype or torch.float32)
        return super().load(model, state, device)

    def fill(self, layer: nn.Module, tensors: dict[str, torch.Tensor], device: Any) -> None:
        weight, bias = tensors.pop("weight"), tensors.pop("bias", None)
        name = self._names[id(layer)]
        quant_type, shape = self.types[f"{name}.weight"]
        if weight.is_floating_point():  # quantize(model): full-precision weights to Q8_0 blocks
            weight = quantize_q8_0(weight)
        block, size, _ = QUANTIZED[quant_type]
        if shape != (layer.out_features, layer.in_features) or weight.numel() * block != layer.weight.numel() * size:
            raise ValueError(f"{name}.weight: the GGUF tensor has shape {shape}, the layer needs "
                             f"{(layer.out_features, layer.in_features)}")
        layer.weight = nn.Parameter(weight.to(device), requires_grad=False)
        layer.quant_type, layer.compute_dtype = quant_type, self.config.compute_dtype
        if bias is not None:
            layer.bias = nn.Parameter(bias.to(device), requires_grad=False)

    def _swap(self, model: nn.Module, dtype: torch.dtype | None) -> None:
        super()._swap(model, dtype)
        self._names = {id(model.get_submodule(n)): n for n in self.swapped}

    def restore(self, layer: nn.Module) -> torch.Tensor:
        return layer.dequantized_weight()


def from_gguf(model_cls: type, path: str | os.PathLike, config: Any, torch_dtype: torch.dtype | None = None,
              quantization_config: GGUFQuantizationConfig | None = None) -> nn.Module:
    """A model of ``model_cls`` (configured from ``config``: a folder with ``config.json`` or a dict) with the
    weights of the ``.gguf`` file at ``path``, its quantized linear layers kept in GGUF blocks."""
    from kernel.config import read_json

    if not isinstance(config, dict):
        config = read_json(os.path.join(config, model_cls.config_name), what=f"{model_cls.__name__} config")
    quantization_config = quantization_config or GGUFQuantizationConfig()
    if not isinstance(quantization_config, GGUFQuantizationConfig):
        raise TypeError(f"a .gguf file takes a GGUFQuantizationConfig, got {type(quantization_config).__name__}")
    state, types = read_gguf(path)
    quantizer = quantization_config.quantizer(types=types)
    return model_cls._from_config_and_files(config, [state], torch_dtype=torch_dtype, quantizer=quantizer)


__all__ = ["GGUFLinear", "GGUFQuantizationConfig", "GGUFQuantizer", "SUPPORTED", "from_gguf", "read_gguf"]
