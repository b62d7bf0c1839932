"""bitsandbytes quantization: ``BitsAndBytesConfig`` (Diffusers' name and arguments).

    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch.float16,
                                                quantization_config=BitsAndBytesConfig(load_in_8bit=True))

* 8-bit: LLM.int8() (Dettmers et al. 2022, arXiv:2208.07339): int8 weights with one scale per
  output row; activation columns above ``llm_int8_threshold`` are multiplied in 16-bit.
* 4-bit: QLoRA's blockwise NF4 or FP4 (Dettmers et al. 2023, arXiv:2305.14314), blocks of 64,
  with ``bnb_4bit_use_double_quant`` quantizing the block scales again; matmuls dequantize to
  ``bnb_4bit_compute_dtype`` (float32 by default).

Every ``nn.Linear`` is swapped for bitsandbytes' ``Linear8bitLt`` / ``Linear4bit`` except the ones
``llm_int8_skip_modules`` names and the model's ``_keep_in_fp32_modules``. The layers that stay get
``torch_dtype``, float16 when none is given (as in Diffusers). bitsandbytes 0.45 and later run
both modes on the CPU. A quantized model saves with ``save_pretrained`` in Diffusers' format
(int8 weights with ``SCB``; packed 4-bit weights with their ``quant_state``) and reloads without
a ``quantization_config``.
"""

from __future__ import annotations

from typing import Any

import torch

from kernel_memory import LinearQuantizer, QuantizationConfig, as_dtype

MIN_VERSION = (0, 45)
QUANT_TYPES = ("fp4", "nf4")


def _bnb():
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise ImportError(f"BitsAndBytesConfig needs bitsandbytes>=0.45 (pip install -U bitsandbytes): {err}") from None
    version = tuple(int(p) for p in bnb.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_VERSION:
        raise ImportError(f"bitsandbytes {bnb.__version__} is too old: 0.45 or later runs on the CPU and reads the "
                          "serialised formats (pip install -U bitsandbytes)")
    return bnb


class BitsAndBytesConfig(QuantizationConfig):
    """8-bit (``load_in_8bit``) or 4-bit (``load_in_4bit``) bitsandbytes quantization of the linear layers."""

    quant_method = "bitsandbytes"

    def __init__(self, load_in_8bit: bool = False, load_in_4bit: bool = False, llm_int8_threshold: float = 6.0,
                 llm_int8_skip_modules: list[str] | str | None = None, llm_int8_enable_fp32_cpu_offload: bool = False,
                 llm_int8_has_fp16_weight: bool = False, bnb_4bit_compute_dtype: Any = None,
                 bnb_4bit_quant_type: str = "fp4", bnb_4bit_use_double_quant: bool = False,
                 bnb_4bit_quant_storage: Any = None, **kwargs: Any):
        load_in_8bit = kwargs.pop("_load_in_8bit", load_in_8bit)  # Diffusers' saved form
        load_in_4bit = kwargs.pop("_load_in_4bit", load_in_4bit)
        if load_in_8bit and load_in_4bit:
            raise ValueError("BitsAndBytesConfig: load_in_8bit and load_in_4bit cannot both be True")
        if bnb_4bit_quant_type not in QUANT_TYPES:
            raise ValueError(f"bnb_4bit_quant_type={bnb_4bit_quant_type!r}; choose one of {', '.join(QUANT_TYPES)}")
        if not isinstance(llm_int8_threshold, (int, float)) or llm_int8_threshold < 0:
            raise ValueError(f"llm_int8_threshold must be a number >= 0 (0 turns the outlier path off), "
                             f"got {llm_int8_threshold!r}")
        if isinstance(llm_int8_skip_modules, str):
            llm_int8_skip_modules = [llm_int8_skip_modules]
        if llm_int8_skip_modules is not None and not all(isinstance(m, str) for m in llm_int8_skip_modules):
            raise TypeError(f"llm_int8_skip_modules must be a list of module names, got {llm_int8_skip_modules!r}")
        self.load_in_8bit, self.load_in_4bit = bool(load_in_8bit), bool(load_in_4bit)
        self.llm_int8_threshold = float(llm_int8_threshold)
        self.llm_int8_skip_modules = list(llm_int8_skip_modules) if llm_int8_skip_modules is not None else None
        self.llm_int8_enable_fp32_cpu_offload = llm_int8_enable_fp32_cpu_offload
        self.llm_int8_has_fp16_weight = llm_int8_has_fp16_weight
        self.bnb_4bit_compute_dtype = as_dtype(bnb_4bit_compute_dtype, "bnb_4bit_compute_dtype") or torch.float32
        self.bnb_4bit_quant_type = bnb_4bit_quant_type
        self.bnb_4bit_use_double_quant = bool(bnb_4bit_use_double_quant)
        self.bnb_4bit_quant_storage = as_dtype(bnb_4bit_quant_storage, "bnb_4bit_quant_storage") or torch.uint8

    @property
    def tolerance(self) -> float:
        """Relative error of a model's outputs the contract suite allows (4-bit rounds much more)."""
        return 0.05 if self.load_in_8bit else 0.5

    @property
    def compression(self) -> float:
        """Weight memory shrink of the linear layers against float32 (the contract models' dtype)."""
        return 3.0 if self.load_in_8bit else 6.0

    def quantization_method(self) -> str | None:
        """``"llm_int8"``, ``"nf4"`` / ``"fp4"``, or ``None`` (Diffusers' name)."""
        if self.load_in_8bit:
            return "llm_int8"
        return self.bnb_4bit_quant_type if self.load_in_4bit else None

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data.update(_load_in_8bit=self.load_in_8bit, _load_in_4bit=self.load_in_4bit)
        return data

    def quantizer(self, pre_quantized: bool = False) -> "BnbQuantizer":
        if not (self.load_in_8bit or self.load_in_4bit):
            raise ValueError("BitsAndBytesConfig quantizes nothing: set load_in_8bit=True or load_in_4bit=True")
        return BnbQuantizer(self, pre_quantized)


class BnbQuantizer(LinearQuantizer):
    """Swaps ``nn.Linear`` for ``bnb.nn.Linear8bitLt`` / ``bnb.nn.Linear4bit``."""

    def __init__(self, config: BitsAndBytesConfig, pre_quantized: bool = False) -> None:
        super().__init__(config, pre_quantized)
        bnb = _bnb()
        self.bnb = bnb
        self.layer_types = (bnb.nn.Linear8bitLt,) if config.load_in_8bit else (bnb.nn.Linear4bit,)

    def check_environment(self) -> None:
        if self.config.load_in_4bit and not hasattr(self.bnb.nn, "Linear4bit"):
            raise ImportError(f"this bitsandbytes build ({self.bnb.__version__}) has no 4-bit support")

    def default_dtype(self, torch_dtype: torch.dtype | None) -> torch.dtype | None:
        if torch_dtype is None and not self.pre_quantized:
            return torch.float16  # Diffusers' default for the layers that stay unquantized
        return torch_dtype

    def skip_patterns(self) -> list[str]:
        return list(self.config.llm_int8_skip_modules or ())

    def mark(self, model: torch.nn.Module, quantized: bool) -> None:
        flag = "is_loaded_in_8bit" if self.config.load_in_8bit else "is_loaded_in_4bit"
        if quantized:
            setattr(model, flag, True)  # peft picks its bitsandbytes LoRA layers from these
        else:
            model.__dict__.pop(flag, None)

    def make_layer(self, linear: torch.nn.Linear) -> torch.nn.Module:
        c, nn = self.config, self.bnb.nn
        with torch.device("meta"):
            if c.load_in_8bit:
                layer = nn.Linear8bitLt(linear.in_features, linear.out_features, linear.bias is not None,
                                        has_fp16_weights=c.llm_int8_has_fp16_weight, threshold=c.llm_int8_threshold)
            else:
                layer = nn.Linear4bit(linear.in_features, linear.out_features, linear.bias is not None,
                                      c.bnb_4bit_compute_dtype, compress_statistics=c.bnb_4bit_use_double_quant,
                                      quant_type=c.bnb_4bit_quant_type, quant_storage=c.bnb_4bit_quant_storage)
        layer.source_cls = type(linear)
        return layer.requires_grad_(False).train(linear.training)

    def fill(self, layer: torch.nn.Module, tensors: dict[str, torch.Tensor], device: Any) -> None:
        nn = self.bnb.nn
        weight = tensors.pop("weight")
        bias = tensors.pop("bias", None)
        if bias is not None:
            layer.bias = torch.nn.Parameter(bias.to(device), requires_grad=False)
        if self.config.load_in_8bit:
            scb = tensors.pop("SCB", None)
            tensors.pop("weight_format", None)  # always row-major since bitsandbytes 0.45
            if self.pre_quantized:
                if scb is None or weight.dtype != torch.int8:
                    raise ValueError(f"a pre-quantized 8-bit weight must be int8 with its SCB row scales; got "
                                     f"{weight.dtype} {'without' if scb is None else 'with'} SCB")
                param = nn.Int8Params(weight.to(device), requires_grad=False, has_fp16_weights=False)
                param.CB, param.SCB = param.data, scb.to(device)
            else:
                param = nn.Int8Params(weight.to("cpu"), requires_grad=False,
                                      has_fp16_weights=self.config.llm_int8_has_fp16_weight).to(device)
            layer.weight = param
        else:
            if self.pre_quantized:
                stats = {k: v for k, v in tensors.items() if k.startswith("weight.")}
                if not any(k.startswith("weight.quant_state.bitsandbytes__") for k in stats):
                    raise ValueError("a pre-quantized 4-bit weight needs its quant_state (weight.quant_state."
                                     "bitsandbytes__nf4 / __fp4 and the absmax tensors)")
                param = nn.Params4bit.from_prequantized(weight, stats, requires_grad=False, device=device, module=layer)
            else:
                c = self.config
                param = nn.Params4bit(weight.to("cpu"), requires_grad=False, compress_statistics=c.bnb_4bit_use_double_quant,
                                      quant_type=c.bnb_4bit_quant_type, quant_storage=c.bnb_4bit_quant_storage,
                                      module=layer).to(device)
            layer.weight = param
        unknown = [k for k in tensors if not k.startswith("weight.")]
        if unknown:
            raise ValueError(f"unexpected tensors for a bitsandbytes layer: {unknown}")

    def restore(self, layer: torch.nn.Module) -> torch.Tensor:
        F = self.bnb.functional
        if isinstance(layer, self.bnb.nn.Linear4bit):
            data, state = layer.weight.data, layer.weight.quant_state
            if getattr(state, "packing_format_for_cpu", False):  # repacked by a forward on an AVX512-bf16 CPU
                data, state = F._convert_weight_packed_for_cpu_inverse(data, state)
            return F.dequantize_4bit(data, state)
        scb = layer.weight.SCB if getattr(layer.weight, "SCB", None) is not None else layer.state.SCB
        return F.int8_vectorwise_dequant(layer.weight.data, scb)


__all__ = ["BitsAndBytesConfig", "BnbQuantizer"]
