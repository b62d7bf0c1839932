"""torchao quantization: ``TorchAoConfig`` (Diffusers' name and arguments).

    TorchAoConfig(Int8WeightOnlyConfig())        # a torchao config object, as Diffusers 0.42 takes
    TorchAoConfig("int8wo")                      # or the short names older Diffusers took

Short names: ``int8wo`` / ``int8_weight_only`` (int8 weights, one scale per row), ``int8dq`` /
``int8_dynamic_activation_int8_weight`` (activations quantized per token too, int8 matmuls),
``int4wo`` / ``int4_weight_only`` (groups of 128; torchao's int4 kernels need CUDA or its
``mslk`` CPU library), ``float8wo`` / ``float8_weight_only`` and ``float8dq`` (need hardware
fp8 matmuls for speed). Any ``torchao.quantization`` config object also works, e.g.
``IntxWeightOnlyConfig(weight_dtype=torch.int4)`` for int4 weights on any CPU.

Each ``nn.Linear`` (less ``modules_to_not_convert`` and the model's ``_keep_in_fp32_modules``)
becomes an :class:`AoLinear`: it keeps the plain tensors of torchao's quantized weight (``weight``
holds the int8 / fp8 data, ``weight_scale`` etc. beside it) as its parameters, so memory counts,
``save_pretrained`` writes ordinary safetensors, and a reload needs no pickled classes; its forward
rebuilds torchao's weight tensor around them (no copy) and calls ``F.linear``, which torchao
dispatches to its kernels. The layers that stay get ``torch_dtype``, bfloat16 when none is given
(as in Diffusers).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernel_memory import LinearQuantizer, QuantizationConfig

#: Diffusers' older short names -> (torchao config class name, arguments).
SHORT_NAMES = {
    "int8wo": ("Int8WeightOnlyConfig", {}), "int8_weight_only": ("Int8WeightOnlyConfig", {}),
    "int8dq": ("Int8DynamicActivationInt8WeightConfig", {}),
    "int8_dynamic_activation_int8_weight": ("Int8DynamicActivationInt8WeightConfig", {}),
    "int4wo": ("Int4WeightOnlyConfig", {}), "int4_weight_only": ("Int4WeightOnlyConfig", {}),
    "float8wo": ("Float8WeightOnlyConfig", {}), "float8_weight_only": ("Float8WeightOnlyConfig", {}),
    "float8dq": ("Float8DynamicActivationFloat8WeightConfig", {}),
    "float8_dynamic_activation_float8_weight": ("Float8DynamicActivationFloat8WeightConfig", {}),
}


def _torchao():
    try:
        import torchao  # noqa: F401
        from torchao.core.config import AOBaseConfig, config_from_dict, config_to_dict
    except ImportError as err:
        raise ImportError(f"TorchAoConfig needs torchao>=0.15 (pip install -U torchao): {err}") from None
    return AOBaseConfig, config_from_dict, config_to_dict


class TorchAoConfig(QuantizationConfig):
    """torchao quantization of the linear layers (see the module docstring)."""

    quant_method = "torchao"

    def __init__(self, quant_type: Any, modules_to_not_convert: list[str] | None = None, **kwargs: Any):
        AOBaseConfig, config_from_dict, _ = _torchao()
        if isinstance(quant_type, dict):  # config.json: {"default": config_to_dict(...)}
            quant_type = config_from_dict(quant_type.get("default", quant_type))
        elif isinstance(quant_type, str):
            if quant_type not in SHORT_NAMES:
                raise ValueError(f"quant_type={quant_type!r} is not a torchao quantization; give a torchao config "
                                 f"object or one of {', '.join(SHORT_NAMES)}")
            import torchao.quantization as ao

            name, args = SHORT_NAMES[quant_type]
            quant_type = getattr(ao, name)(**args, **kwargs)
        if not isinstance(quant_type, AOBaseConfig):
            raise TypeError(f"quant_type must be a torchao config (e.g. Int8WeightOnlyConfig()) or a short name, "
                            f"got {type(quant_type).__name__}")
        if isinstance(modules_to_not_convert, str):
            modules_to_not_convert = [modules_to_not_convert]
        self.quant_type = quant_type
        self.modules_to_not_convert = list(modules_to_not_convert) if modules_to_not_convert else None

    #: Relative output error the contract suite allows, and weight shrink against float32.
    tolerance = 0.05
    compression = 3.0

    def to_dict(self) -> dict[str, Any]:
        _, _, config_to_dict = _torchao()
        return {"quant_method": self.quant_method, "quant_type": {"default": config_to_dict(self.quant_type)},
                "modules_to_not_convert": self.modules_to_not_convert}

    def get_apply_tensor_subclass(self) -> Any:
        return self.quant_type

    def quantizer(self, pre_quantized: bool = False) -> "AoQuantizer":
        return AoQuantizer(self, pre_quantized)


class AoLinear(nn.Linear):
    """A linear layer whose weight is torchao's quantized tensor, kept as plain tensors (see the module doc)."""

    def _setup(self, quantized: torch.Tensor) -> None:
        names, self._ao_meta = quantized.__tensor_flatten__()
        self._ao_cls, self._ao_names = type(quantized), list(names)
        self._ao_shape, self._ao_stride = tuple(quantized.shape), tuple(quantized.stride())
        del self.weight
        for name in self._ao_names:
            key = "weight" if name == "qdata" else f"weight_{name}"
            self.register_parameter(key, nn.Parameter(getattr(quantized, name).detach(), requires_grad=False))

    def quantized_weight(self) -> torch.Tensor:
        inner = {n: getattr(self, "weight" if n == "qdata" else f"weight_{n}") for n in self._ao_names}
        return self._ao_cls.__tensor_unflatten__(inner, self._ao_meta, self._ao_shape, self._ao_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={self._ao_cls.__name__}"


class AoQuantizer(LinearQuantizer):
    layer_types = (AoLinear,)

    def default_dtype(self, torch_dtype: torch.dtype | None) -> torch.dtype | None:
        if torch_dtype is None and not self.pre_quantized:
            return torch.bfloat16  # Diffusers' default for the layers that stay unquantized
        return torch_dtype

    def skip_patterns(self) -> list[str]:
        return list(self.config.modules_to_not_convert or ())

    def make_layer(self, linear: nn.Linear) -> nn.Module:
        with torch.device("meta"):
            layer = AoLinear(linear.in_features, linear.out_features, linear.bias is not None)
        return layer.train(linear.training)

    def _quantize(self, weight: torch.Tensor) -> torch.Tensor:
        from torchao.quantization import quantize_

        holder = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
        holder.weight = nn.Parameter(weight, requires_grad=False)
        try:
            quantize_(holder, self.config.quant_type)
        except (ImportError, NotImplementedError, RuntimeError, ValueError) as err:
            raise RuntimeError(f"torchao cannot run {type(self.config.quant_type).__name__} on {weight.device} "
                               f"({type(err).__name__}: {err})") from None
        return holder.weight.detach()

    def fill(self, layer: nn.Module, tensors: dict[str, torch.Tensor], device: Any) -> None:
        weight = tensors.pop("weight")
        bias = tensors.pop("bias", None)
        dtype = getattr(layer, "_kernel_original_dtype", None) or (bias.dtype if bias is not None else torch.bfloat16)
        if self.pre_quantized:  # the tensor type and its non-tensor fields come from quantizing a blank weight
            layer._setup(self._quantize(torch.zeros(layer.out_features, layer.in_features, dtype=dtype, device=device)))
            for name, param in layer.named_parameters(recurse=False):
                if name != "bias":
                    value = weight if name == "weight" else tensors.pop(name, None)
                    if value is None or value.shape != param.shape:
                        raise ValueError(f"pre-quantized torchao weight: {name} is missing or has the wrong shape")
                    param.data = value.to(device=device, dtype=param.dtype)
        else:
            layer._setup(self._quantize(weight.to(device)))
        if bias is not None:
            layer.bias = nn.Parameter(bias.to(device), requires_grad=False)
        if tensors:
            raise ValueError(f"unexpected tensors for a torchao layer: {sorted(tensors)}")

    def restore(self, layer: nn.Module) -> torch.Tensor:
        return layer.quantized_weight().dequantize()


__all__ = ["AoLinear", "AoQuantizer", "TorchAoConfig"]
