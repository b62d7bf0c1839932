"""``PipelineQuantizationConfig``: quantize a pipeline's components while it loads (Diffusers' API).

    PipelineQuantizationConfig(quant_backend="bitsandbytes_4bit",
                               quant_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
                               components_to_quantize=["transformer", "text_encoder_2"])
    PipelineQuantizationConfig(quant_mapping={"transformer": BitsAndBytesConfig(load_in_8bit=True)})

``quant_backend`` is one of Diffusers' backend names (``bitsandbytes_4bit``, ``bitsandbytes_8bit``,
``torchao``, ``gguf``); each is registered by the plugin that implements it, so an installed
quantizer plugin is all it takes. Our models get the plugin's config class; ``transformers``
components (text encoders) get transformers' own class of the same name with the same arguments.
Without ``components_to_quantize`` every model component is quantized.

The pipeline's ``from_pretrained`` calls :meth:`component_configs` once, before loading anything,
with the class of each component; a component that cannot take a quantization config (a
scheduler, a tokenizer) or a name the pipeline does not have is a ``ValueError`` then.
"""

from __future__ import annotations

from typing import Any

import torch


def _is_transformers(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "transformers"


def backend_names() -> list[str]:
    """The quantization backends the installed plugins register (lower-case names of config classes)."""
    from kernel.registry import get_registry

    from kernel_memory.config import QuantizationConfig

    registry = get_registry()
    found = []
    for name in registry.names():
        if name != name.lower():
            continue
        try:
            obj = registry.resolve(name)
        except Exception:  # noqa: BLE001 - a broken plugin offers no backend
            continue
        if isinstance(obj, type) and issubclass(obj, QuantizationConfig):
            found.append(name)
    return found


def backend_class(name: str) -> type:
    """The config class registered for backend ``name``; a ``ValueError`` listing the installed ones."""
    from kernel.registry import get_registry

    from kernel_memory.config import QuantizationConfig

    registry = get_registry()
    cls = registry.resolve(name) if isinstance(name, str) and name == name.lower() and registry.has(name) else None
    if not (isinstance(cls, type) and issubclass(cls, QuantizationConfig)):
        raise ValueError(f"unknown quantization backend quant_backend={name!r}; installed backends: "
                         f"{', '.join(backend_names()) or 'none (pip install kernel-quant-bitsandbytes, ...)'}")
    return cls


class PipelineQuantizationConfig:
    """Which components of a pipeline to quantize, and how (see the module docstring)."""

    def __init__(self, quant_backend: str | None = None, quant_kwargs: dict | None = None,
                 components_to_quantize: list[str] | str | None = None, quant_mapping: dict[str, Any] | None = None):
        if quant_backend and quant_mapping:
            raise ValueError("PipelineQuantizationConfig takes quant_backend or quant_mapping, not both")
        if not quant_backend and not quant_mapping:
            raise ValueError("PipelineQuantizationConfig needs quant_backend= (with quant_kwargs=) or quant_mapping=")
        if quant_backend and not quant_kwargs:
            raise ValueError(f"quant_backend={quant_backend!r} needs quant_kwargs= (the arguments of its config class)")
        if isinstance(components_to_quantize, str):
            components_to_quantize = [components_to_quantize]
        self.quant_backend = quant_backend
        self.quant_kwargs = dict(quant_kwargs or {})
        self.components_to_quantize = list(components_to_quantize) if components_to_quantize else None
        self.quant_mapping = dict(quant_mapping) if quant_mapping else None
        self.config_mapping: dict[str, Any] = {}
        if quant_backend:
            backend_class(quant_backend)(**self.quant_kwargs)  # bad arguments fail here, not mid-load
        for name, config in (self.quant_mapping or {}).items():
            if not (callable(getattr(config, "quantizer", None)) or _is_transformers(type(config))):
                raise TypeError(f"quant_mapping[{name!r}] must be a quantization config (BitsAndBytesConfig(...), "
                                f"TorchAoConfig(...), a transformers config ...), got {type(config).__name__}")

    def _config_for(self, cls: type) -> Any:
        ours = backend_class(self.quant_backend)
        if not _is_transformers(cls):
            return ours(**self.quant_kwargs)
        import transformers

        theirs = getattr(transformers, ours.__name__, None)
        if theirs is None:
            raise ValueError(f"transformers has no {ours.__name__} for the {cls.__name__} component; leave it out of "
                             "components_to_quantize or give it a config in quant_mapping")
        return theirs(**self.quant_kwargs)

    def component_configs(self, classes: dict[str, type | None]) -> dict[str, Any]:
        """``{component: config}`` for one pipeline load, from ``{component: class}``; checked before loading."""
        requested = list(self.quant_mapping or self.components_to_quantize or [])
        unknown = [n for n in requested if n not in classes]
        if unknown:
            raise ValueError(f"quantization config names {unknown}, which the pipeline does not have; its "
                             f"components are {sorted(classes)}")
        models = {n for n, c in classes.items() if isinstance(c, type) and issubclass(c, torch.nn.Module)}
        wrong = [n for n in requested if n not in models]
        if wrong:
            kinds = ", ".join(f"{n} ({getattr(classes[n], '__name__', classes[n])})" for n in wrong)
            raise ValueError(f"cannot quantize {kinds}: only model components take a quantization config "
                             f"({', '.join(sorted(models))})")
        if self.quant_mapping:
            self.config_mapping = dict(self.quant_mapping)
        else:
            names = requested or sorted(models)
            self.config_mapping = {n: self._config_for(classes[n]) for n in names}
        return dict(self.config_mapping)

    def __repr__(self) -> str:
        return "".join(f"{name} {config}" for name, config in sorted(self.config_mapping.items())) or (
            f"PipelineQuantizationConfig(quant_backend={self.quant_backend!r}, "
            f"components_to_quantize={self.components_to_quantize!r}, quant_mapping={self.quant_mapping!r})")
