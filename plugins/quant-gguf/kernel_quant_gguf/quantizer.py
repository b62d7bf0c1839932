"""GGUF quantization: the config, the quantizer that swaps linear layers, the layer, and ``from_gguf``."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernel_memory import LinearQuantizer, QuantizationConfig, as_dtype
from kernel_quant_gguf.dequant import SUPPORTED, dequantize, quantize_q8_0
from kernel_quant_gguf.tensor import GGUFFile, GGUFTensor


class GGUFQuantizationConfig(QuantizationConfig):
    """Load GGUF-quantized weights; ``compute_dtype`` is what each layer dequantises to (float32 by default)
    and the dtype of the other weights when ``torch_dtype`` is not given (as in Diffusers)."""

    quant_method = "gguf"

    def __init__(self, compute_dtype: Any = None, **_: Any):
        self.compute_dtype = as_dtype(compute_dtype, "compute_dtype") or torch.float32

    def quantizer(self, pre_quantized: bool = False) -> "GGUFQuantizer":
        return GGUFQuantizer(self)

    #: For the contract suite: Q8_0 of float32 weights (34 bytes per 32 weights).
    tolerance = 0.05
    compression = 3.0


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, tuple[int, ...]]]]:
    """The tensors of a ``.gguf`` file: ``(state, types)`` where ``state[key]`` is a :class:`GGUFTensor` (raw
    ``uint8`` rows) for a quantized tensor, or the tensor itself, and ``types[key] = (quant type, shape)``."""
    file = GGUFFile(path)
    return dict(file), file.types


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
    """Swaps the linear layers whose weights come as :class:`GGUFTensor` for :class:`GGUFLinear`. Which those
    are is known from the tensors only, so the layers are swapped in ``load``, not ``prepare``."""

    layer_types = (GGUFLinear,)

    def __init__(self, config: GGUFQuantizationConfig, pre_quantized: bool = True):
        super().__init__(config, pre_quantized=True)
        self.types: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._swapped_in = False

    def check_environment(self) -> None:
        import gguf  # noqa: F401 - required to read the files

    def default_dtype(self, torch_dtype: torch.dtype | None) -> torch.dtype | None:
        return torch_dtype or self.config.compute_dtype

    def prepare(self, model: nn.Module, torch_dtype: torch.dtype | None) -> torch.dtype | None:
        self.check_environment()
        self.dtype = self.default_dtype(torch_dtype)
        return self.dtype

    def quantize(self, model: nn.Module) -> nn.Module:
        """Quantize a loaded model's linear layers to Q8_0 (the GGUF type with an exact, simple quantizer;
        the others come from .gguf files)."""
        self.types = {f"{n}.weight": ("Q8_0", (m.out_features, m.in_features)) for n, m in model.named_modules()
                      if isinstance(m, nn.Linear) and not isinstance(m, GGUFLinear) and m.in_features % 32 == 0}
        return super().quantize(model)

    def targets(self, model: nn.Module) -> list[str]:
        return [n for n in super().targets(model) if f"{n}.weight" in self.types]

    def load(self, model: nn.Module, state: dict[str, torch.Tensor], device: Any) -> list[str]:
        if not self._swapped_in:  # loading a file: its GGUF tensors say which layers are quantized
            self.types = {k: (t.quant_type, t.logical_shape) for k, t in state.items() if isinstance(t, GGUFTensor)}
            if not self.types and any(k.endswith(".weight") and t.dtype == torch.uint8 for k, t in state.items()):
                raise ValueError("GGUF weights load from the .gguf file (from_single_file or from_gguf); a saved "
                                 "folder does not hold their block types")
            self._swap(model, self.dtype)
        prefixes = tuple(f"{n}." for n in self.swapped)
        for key in list(state):  # quantized tensors outside the swapped layers: dequantised once, here
            if isinstance(state[key], GGUFTensor) and not key.startswith(prefixes):
                state[key] = state.pop(key).to(device).dequantize(self.dtype or torch.float32)
        return super().load(model, state, device)

    def make_layer(self, linear: nn.Linear) -> nn.Module:
        with torch.device("meta"):
            layer = GGUFLinear(linear.in_features, linear.out_features, linear.bias is not None)
        return layer.requires_grad_(False).train(linear.training)

    def fill(self, layer: nn.Module, tensors: dict[str, torch.Tensor], device: Any) -> None:
        weight, bias = tensors.pop("weight"), tensors.pop("bias", None)
        name = self._names[id(layer)]
        quant_type, shape = self.types[f"{name}.weight"]
        if shape != (layer.out_features, layer.in_features):
            raise ValueError(f"{name}.weight: the GGUF tensor has shape {shape}, the layer needs "
                             f"{(layer.out_features, layer.in_features)}")
        if isinstance(weight, GGUFTensor):
            weight = weight.raw()
        elif weight.is_floating_point():  # quantize(model): full-precision weights to Q8_0 blocks
            weight = quantize_q8_0(weight)
        layer.weight = nn.Parameter(weight.to(device), requires_grad=False)
        layer.quant_type, layer.compute_dtype = quant_type, self.config.compute_dtype
        if bias is not None:
            layer.bias = nn.Parameter(bias.to(device), requires_grad=False)

    def _swap(self, model: nn.Module, dtype: torch.dtype | None) -> None:
        super()._swap(model, dtype)
        self._swapped_in = True
        self._names = {id(model.get_submodule(n)): n for n in self.swapped}

    def restore(self, layer: nn.Module) -> torch.Tensor:
        return layer.dequantized_weight()


def from_gguf(model_cls: type, path: str | os.PathLike, config: Any, torch_dtype: torch.dtype | None = None,
              quantization_config: GGUFQuantizationConfig | None = None) -> nn.Module:
    """A model of ``model_cls`` (configured from ``config``: a folder with ``config.json`` or a dict) with the
    weights of the ``.gguf`` file at ``path`` under Diffusers' names, its quantized linear layers kept in GGUF
    blocks. (Files in an original layout, as most are shared: ``model_cls.from_single_file(path)``.)"""
    from kernel.config import read_json

    if not isinstance(config, dict):
        config = read_json(os.path.join(config, model_cls.config_name), what=f"{model_cls.__name__} config")
    quantization_config = quantization_config or GGUFQuantizationConfig()
    if not isinstance(quantization_config, GGUFQuantizationConfig):
        raise TypeError(f"a .gguf file takes a GGUFQuantizationConfig, got {type(quantization_config).__name__}")
    state = dict(GGUFFile(path))
    return model_cls._from_config_and_files(config, [state], torch_dtype=torch_dtype,
                                            quantizer=quantization_config.quantizer())


__all__ = ["GGUFLinear", "GGUFQuantizationConfig", "GGUFQuantizer", "GGUFTensor", "SUPPORTED", "from_gguf",
           "read_gguf"]
