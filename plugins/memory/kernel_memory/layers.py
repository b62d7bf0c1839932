"""Swapping a model's ``nn.Linear`` layers for a backend's quantized layers, at load time or after.

:class:`LinearQuantizer` is what a config's ``quantizer()`` returns. The kernel's
``ModelMixin.from_pretrained`` calls, in order:

* ``prepare(model, torch_dtype) -> torch_dtype`` on the model still on the meta device: every
  ``nn.Linear`` that is not kept in full precision becomes the backend's layer (still empty), and
  the dtype of the layers that stay is returned;
* ``load(model, state, device) -> keys``: the tensors of the swapped layers are popped from the
  state dict (so each full-precision weight is freed as soon as it is quantized), quantized, or
  reassembled when ``pre_quantized``, and placed; the keys it took are returned.

``quantize(model)`` does the same for a model that is already loaded, and ``dequantize(model)``
puts ``nn.Linear`` layers back, in the dtype each had before.

Which layers stay in full precision is a rule, as in Diffusers: the layers named in the config's
skip list and in the model's ``_keep_in_fp32_modules``; a name matches a layer when it is the
layer's own name, its full dotted path, or the path of a module above it. Norms, embeddings and
convolutions are not ``nn.Linear`` and are never swapped.

A backend subclasses this and implements ``make_layer``, ``fill`` and ``restore``.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Attribute recorded on each swapped layer: the dtype its weight had, for ``dequantize``.
ORIGINAL_DTYPE = "_kernel_original_dtype"


def is_kept(name: str, patterns: Iterable[str]) -> bool:
    """Whether the layer at dotted path ``name`` is kept in full precision by one of ``patterns``."""
    leaf = name.rsplit(".", 1)[-1]
    return any(p == leaf or p == name or f"{p}." in name for p in patterns)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


class LinearQuantizer:
    """Swaps ``nn.Linear`` layers for quantized ones (see the module docstring)."""

    #: The backend's quantized layer classes (never swapped again; found by ``dequantize``).
    layer_types: tuple[type, ...] = ()

    def __init__(self, config: Any, pre_quantized: bool = False) -> None:
        self.config = config
        self.pre_quantized = pre_quantized
        self.swapped: list[str] = []
        self.dtype: torch.dtype | None = None

    # ---------------------------------------------------------------- backend hooks
    def check_environment(self) -> None:
        """Raise when the backend cannot run here (library missing or too old)."""

    def default_dtype(self, torch_dtype: torch.dtype | None) -> torch.dtype | None:
        """The dtype of the layers that are not quantized, from the user's ``torch_dtype``."""
        return torch_dtype

    def skip_patterns(self) -> list[str]:
        """Layer names the config keeps in full precision."""
        return []

    def make_layer(self, linear: nn.Linear) -> nn.Module:
        """The backend's empty layer for ``linear`` (on the meta device)."""
        raise NotImplementedError

    def fill(self, layer: nn.Module, tensors: dict[str, torch.Tensor], device: Any) -> None:
        """Quantize (or, when ``pre_quantized``, reassemble) ``tensors`` (keys relative to the layer:
        ``weight``, ``bias``, and the backend's extras) into ``layer`` on ``device``."""
        raise NotImplementedError

    def restore(self, layer: nn.Module) -> torch.Tensor:
        """The dequantized weight of ``layer`` (any floating dtype)."""
        raise NotImplementedError

    def mark(self, model: nn.Module, quantized: bool) -> None:
        """Set (or clear) the backend's flags on the model (e.g. peft reads ``is_loaded_in_8bit``)."""

    # ---------------------------------------------------------------- the kernel's hooks
    def targets(self, model: nn.Module) -> list[str]:
        kept = list(self.skip_patterns()) + list(getattr(model, "_keep_in_fp32_modules", None) or ())
        return [name for name, m in model.named_modules()
                if isinstance(m, nn.Linear) and not isinstance(m, self.layer_types) and name and not is_kept(name, kept)]

    def prepare(self, model: nn.Module, torch_dtype: torch.dtype | None) -> torch.dtype | None:
        self.check_environment()
        dtype = self.default_dtype(torch_dtype)
        self._swap(model, dtype)
        return dtype

    def _swap(self, model: nn.Module, dtype: torch.dtype | None) -> None:
        self.dtype = dtype
        self.swapped = self.targets(model)
        if not self.swapped:
            logger.warning("%s: no nn.Linear layer to quantize in %s", type(self.config).__name__, type(model).__name__)
        for name in self.swapped:
            linear = model.get_submodule(name)
            layer = self.make_layer(linear)
            setattr(layer, ORIGINAL_DTYPE, dtype if dtype is not None else linear.weight.dtype)
            set_submodule(model, name, layer)
        if callable(getattr(model, "register_to_config", None)):
            model.register_to_config(quantization_config=self.config.to_dict())
        model.is_quantized = True
        model.quantization_method = self.config.quant_method
        self.mark(model, True)

    def load(self, model: nn.Module, state: dict[str, torch.Tensor], device: Any) -> list[str]:
        owners = set(self.swapped)
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        taken: list[str] = []
        for key in list(state):
            owner = key
            while "." in owner:
                owner = owner.rsplit(".", 1)[0]
                if owner in owners:
                    grouped.setdefault(owner, {})[key[len(owner) + 1:]] = state.pop(key)
                    taken.append(key)
                    break
        for name in self.swapped:
            tensors = grouped.pop(name, {})
            if "weight" not in tensors:
                continue  # the kernel reports it as missing
            layer = model.get_submodule(name)
            self.fill(layer, tensors, device)
            tensors.clear()  # drop the full-precision weight now, not at the end of the load
            taken += [f"{name}.{key}" for key, _ in layer.named_parameters(recurse=False)]
        model.hf_quantizer = self
        return taken

    # ---------------------------------------------------------------- after loading
    def quantize(self, model: nn.Module) -> nn.Module:
        """Quantize a loaded model in place."""
        if getattr(model, "hf_quantizer", None) is not None:
            raise ValueError(f"{type(model).__name__} is already quantized; call dequantize() first")
        self.check_environment()
        state: dict[str, torch.Tensor] = {}
        device: Any = "cpu"
        for name in self.targets(model):
            linear = model.get_submodule(name)
            device = linear.weight.device
            state[f"{name}.weight"] = linear.weight.detach()
            if linear.bias is not None:
                state[f"{name}.bias"] = linear.bias.detach()
        self._swap(model, None)  # each layer remembers its own dtype
        self.load(model, state, device)
        return model

    def dequantize(self, model: nn.Module) -> nn.Module:
        """Full-precision ``nn.Linear`` layers again (with the quantization error), in their original dtypes."""
        for name, layer in list(model.named_modules()):
            if not isinstance(layer, self.layer_types):
                continue
            weight = self.restore(layer)
            dtype = getattr(layer, ORIGINAL_DTYPE, None) or weight.dtype
            with torch.device("meta"):
                linear = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
            linear.weight = nn.Parameter(weight.to(dtype))
            if layer.bias is not None:
                linear.bias = nn.Parameter(layer.bias.detach().to(dtype))
            linear.train(layer.training)
            set_submodule(model, name, linear)
        for flag in ("is_quantized", "quantization_method", "hf_quantizer"):
            model.__dict__.pop(flag, None)
        self.mark(model, False)
        return model
