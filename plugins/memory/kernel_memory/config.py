"""The base of every quantizer plugin's config class (``BitsAndBytesConfig``, ``TorchAoConfig`` ...).

A config is what users pass as ``Model.from_pretrained(..., quantization_config=config)``. The
kernel asks it for ``config.quantizer(pre_quantized)``, an object with ``prepare`` / ``load`` /
``dequantize`` (see :class:`kernel_memory.layers.LinearQuantizer`). The config itself also
fits :class:`kernel.protocols.Quantizer`: ``config.quantize(model)`` quantizes an already-loaded
model in place, ``config.dequantize(model)`` undoes it.

``to_dict`` writes the ``quantization_config`` entry of ``config.json`` in Diffusers' layout
(``quant_method`` plus the constructor arguments, dtypes as names), so a quantized folder saved
here loads in Diffusers and back; ``from_dict`` reads it, ignoring keys the class does not take.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import torch


def dtype_name(value: Any) -> Any:
    """``torch.float16`` -> ``"float16"`` (other values unchanged), for JSON."""
    return str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value


def as_dtype(value: Any, argument: str) -> torch.dtype | None:
    """A ``torch.dtype`` from a dtype or its name (``"bfloat16"``); a clear error otherwise."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and isinstance(getattr(torch, value.removeprefix("torch."), None), torch.dtype):
        return getattr(torch, value.removeprefix("torch."))
    raise ValueError(f"{argument}={value!r} is not a torch dtype; give e.g. torch.bfloat16 or 'bfloat16'")


class QuantizationConfig:
    """Base of the quantizer plugins' configs; subclasses set ``quant_method`` and implement ``quantizer``."""

    component_kind = "quantizer"
    #: The name Diffusers writes as ``quant_method`` (registered by the plugin under the same name).
    quant_method: str = ""

    def quantizer(self, pre_quantized: bool = False) -> Any:
        """The object that quantizes one model load (``pre_quantized``: the weights on disk already are)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- Quantizer protocol
    def quantize(self, module: torch.nn.Module) -> torch.nn.Module:
        """Quantize a loaded model in place (its linear layers are swapped); returns it."""
        self.quantizer().quantize(module)
        return module

    def dequantize(self, module: torch.nn.Module) -> torch.nn.Module:
        """Swap the quantized layers back to full-precision ones, in the dtypes they had."""
        from kernel_memory.switches import dequantize

        if "hf_quantizer" not in module.__dict__:
            module.hf_quantizer = self.quantizer()
        return dequantize(module)

    # ---------------------------------------------------------------- serialisation
    def _init_names(self) -> list[str]:
        params = inspect.signature(type(self).__init__).parameters
        return [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]

    def to_dict(self) -> dict[str, Any]:
        """The ``quantization_config`` entry of ``config.json``."""
        return {"quant_method": self.quant_method, **{n: dtype_name(getattr(self, n)) for n in self._init_names()}}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "QuantizationConfig":
        names = set(inspect.signature(cls.__init__).parameters) - {"self"}
        return cls(**{k: v for k, v in config.items() if k in names})

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.to_dict() == self.to_dict()

    __hash__ = None  # mutable, like Diffusers' configs

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"
