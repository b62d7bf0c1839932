"""Checkpoint files: safe, lazy reading, and single files in a model's original layout.

The kernel names no family: plugins list the families they know (each with bundled Diffusers configs),
detect them from keys and shapes, and convert each component (hooks in :mod:`kernel.hookspecs`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from kernel.config import read_json
from kernel.hub import HUB_KWARGS, resolve_folder
from kernel.modeling import gc_paused
from kernel.registry import get_registry

LOADER_KWARGS = {*HUB_KWARGS, "variant", "device_map", "use_safetensors", "trust_remote_code", "low_cpu_mem_usage",
                 "quantization_config"}


class Checkpoint(Mapping):
    """A checkpoint's tensors by key, each read on access: safetensors memory-mapped, any other file only
    through ``torch.load(weights_only=True)`` (plain, or nested under ``state_dict``), or a format a plugin reads
    (``kernel_open_checkpoint``: GGUF). ``shapes`` reads no data; ``quantization_config`` is the format's default."""

    def __init__(self, source: str | os.PathLike | Mapping, name: str | None = None) -> None:
        self._file, self.name = None, name or (str(source) if not isinstance(source, Mapping) else "a state dict")
        self.quantization_config, opened = None, None
        if isinstance(source, Mapping):
            self._tensors = source
        elif not Path(source).is_file():
            raise FileNotFoundError(f"no checkpoint file {source}")
        elif _head(source)[8:] == b"{":  # safetensors: an 8-byte header length, then the JSON header
            from safetensors import safe_open

            try:
                self._file = safe_open(str(source), framework="pt")
                self._tensors = dict.fromkeys(self._file.keys())
                self.shapes = {k: tuple(self._file.get_slice(k).get_shape()) for k in self._tensors}
            except Exception as err:  # noqa: BLE001 - safetensors raises several kinds
                raise ValueError(f"could not read {source}: it is corrupt or truncated ({err})") from None
        elif (opened := get_registry().hook.kernel_open_checkpoint(path=Path(source))) is not None:
            self._tensors, self.shapes, self.quantization_config = opened
        else:
            try:
                sd = torch.load(str(source), map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:  # noqa: BLE001 - torch raises several kinds
                raise ValueError(f"could not read {source} with torch.load(weights_only=True): it is not a "
                                 f"checkpoint, is truncated, or holds more than tensors ({err})") from None
            while isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
                sd = sd["state_dict"]
            self._tensors = _tensors_of(sd)
        if self._file is None and opened is None:
            self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._file is None:
            return self._tensors[key]
        if key not in self._tensors:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __contains__(self, key: object) -> bool:  # (Mapping's would read the tensor)
        return key in self._tensors

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __str__(self) -> str:
        return self.name


def _tensors_of(obj: Any, prefix: str = "") -> dict:
    """The tensors of a loaded pickle, nested dicts flattened with dots (other values dropped)."""
    out = {}
    for key, value in (obj.items() if isinstance(obj, dict) else ()):
        if isinstance(value, torch.Tensor):
            out[prefix + str(key)] = value
        elif isinstance(value, dict):
            out.update(_tensors_of(value, f"{prefix}{key}."))
    return out


def _head(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read(9)


def _families() -> dict[str, Path]:
    return {f: Path(p) for found in get_registry().hook.kernel_single_file_families() for f, p in found.items()}


def detect(checkpoint: Checkpoint) -> str:
    """The family the installed plugins recognise in ``checkpoint`` (a ``ValueError`` listing them if none)."""
    found = [f for f in get_registry().hook.kernel_detect_family(shapes=checkpoint.shapes) if f]
    if not found:
        known = ", ".join(sorted(_families())) or "none (pip install kernel-single-file)"
        raise ValueError(f"{checkpoint}: unknown checkpoint layout ({len(checkpoint)} tensors, e.g. "
                         f"{sorted(checkpoint.shapes)[:3]}); the installed plugins know these families: {known}")
    return found[0]


def config_folder(family: str, config: str | os.PathLike | None = None, **hub: Any) -> Path:
    """``config`` (a Diffusers folder or Hub repo: configs and tokenizers only) or the family's bundled configs."""
    if config is not None:
        return resolve_folder(config, allow_patterns=["*.json", "*.txt", "*.model"], **hub)
    return _families()[family]


@contextlib.contextmanager
def skip_init():
    """``torch.nn.init`` off while a model is built whose every weight is then assigned (transformers' trick)."""
    names = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "kaiming_uniform_",
             "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "orthogonal_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def empty(cls: type, folder: Path) -> torch.nn.Module:
    """``cls`` (one of ours or a transformers model) configured from ``folder``, on the meta device."""
    from accelerate import init_empty_weights

    if hasattr(cls, "_from_config_and_files"):
        with init_empty_weights(include_buffers=False), skip_init():
            return cls.from_config(read_json(folder / cls.config_name))
    try:  # transformers' own switch: its initialisers bypass torch.nn.init's names
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    with init_empty_weights(include_buffers=False), no_init_weights():
        return cls(cls.config_class.from_pretrained(str(folder)))


def _convert(family: str, name: str, checkpoint: Checkpoint, model: torch.nn.Module, options: dict):
    state = get_registry().hook.kernel_convert_checkpoint(
        family=family, component=name, checkpoint=checkpoint, model=model, options=options)
    return None if state is None else Checkpoint(state, name=f"{checkpoint} ({name} of a {family} checkpoint)")


def quantizer(checkpoint: Checkpoint, given: Any = None) -> Any:
    """The quantizer of a model loaded from ``checkpoint``: ``given``'s (a quantizer plugin's config), or that
    of the config the file's format loads with (GGUF's); ``None`` for plain tensors."""
    from kernel.modeling import quantizer_for

    default = checkpoint.quantization_config
    if default is not None and given is not None and getattr(given, "quant_method", None) != default.quant_method:
        raise TypeError(f"{checkpoint} holds {default.quant_method} tensors: quantization_config must be a "
                        f"{type(default).__name__}, got {type(given).__name__}")
    return quantizer_for(None, default if given is None else given)


def build(model: torch.nn.Module, folder: Path, state: Checkpoint, torch_dtype: torch.dtype | None = None,
          quantizer: Any = None):
    """``model`` (from :func:`empty`) given the converted weights ``state``, in eval mode."""
    from kernel.modeling import read_state_dict

    cls = type(model)
    if hasattr(cls, "_from_config_and_files"):
        return cls._from_config_and_files(read_json(folder / cls.config_name), [state], torch_dtype=torch_dtype,
                                          model=model, quantizer=quantizer)
    if quantizer is not None:
        raise ValueError(f"{cls.__name__} (a transformers model) does not load quantized from a single file")
    missing = model.load_state_dict(read_state_dict([state], dtype=torch_dtype), strict=False, assign=True).missing_keys
    if missing:
        raise ValueError(f"{cls.__name__}: {state} lacks {len(missing)} weights the model needs, e.g. {missing[:5]}")
    model.tie_weights()  # a transformers model
    return model.eval()


@gc_paused
def load_model(cls: type, source: Any, config: Any = None, subfolder: str | None = None,
               torch_dtype: torch.dtype | None = None, **options: Any) -> torch.nn.Module:
    """``cls.from_single_file``: the component of class ``cls`` (or named ``subfolder``) of a checkpoint."""
    checkpoint = Checkpoint(source)
    quantized = quantizer(checkpoint, options.pop("quantization_config", None))
    family = detect(checkpoint)
    index = read_json(config_folder(family) / "model_index.json")
    name = subfolder or next((k for k, v in index.items() if isinstance(v, list) and v[-1:] == [cls.__name__]), None)
    if name not in index:
        raise ValueError(f"{checkpoint} is a {family} checkpoint, which has no {subfolder or cls.__name__}")
    folder = config_folder(family, config)
    folder = folder if (folder / "config.json").is_file() else folder / name
    model = empty(cls, folder)
    state = _convert(family, name, checkpoint, model, options)
    if state is None:
        raise ValueError(f"{checkpoint} ({family} checkpoint) holds no {name} weights for {cls.__name__}")
    return build(model, folder, state, torch_dtype, quantized)


@gc_paused
def load_pipeline(cls: type, source: Any, config: Any = None, torch_dtype: Any = None, **kwargs: Any):
    """``Pipeline.from_single_file``: models from the file; configs, schedulers and tokenizers from ``config``
    (or the bundled configs); ``kwargs`` named like a component replace it."""
    from kernel.loading import check_fits
    from kernel.pipeline import DiffusionPipeline, resolve_class

    checkpoint = Checkpoint(source)
    family = detect(checkpoint)
    folder = config_folder(family, config, **{k: kwargs[k] for k in HUB_KWARGS if k in kwargs})
    index = read_json(folder / "model_index.json", what="model_index.json")
    if "_class_name" not in index:
        model = next((v[-1] for v in index.values() if isinstance(v, list)), "the model class")
        raise ValueError(f"{checkpoint} holds one model ({family}), not a pipeline: load it with "
                         f"kernel.component({model!r}).from_single_file(path)")
    if cls is not DiffusionPipeline:
        check_fits(cls.__name__, cls, index)
    pipeline_cls = cls._pipeline_class_for(index)
    params = pipeline_cls._init_parameters()
    options = {k: kwargs.pop(k) for k in list(kwargs) if k not in params and k not in LOADER_KWARGS}
    classes = {name: resolve_class(*entry, component=name) for name, entry in index.items()
               if name not in kwargs and name in params and isinstance(entry, list) and None not in entry}
    models = [n for n, c in classes.items() if isinstance(c, type) and issubclass(c, torch.nn.Module)]

    def check(names: list[str]) -> None:  # the folder has what the file lacks (more than a config.json)
        missing = [n for n in names if not any(p.name != "config.json" for p in (folder / n).glob("*"))]
        if missing:
            raise ValueError(f"{checkpoint} ({family} checkpoint) holds no {', '.join(missing)}, and "
                             f"{config or 'the bundled config'} has none: pass " + ", ".join(f"{m}=..." for m in
                             missing) + " (None where optional), or config=<a local Diffusers folder that has them>")

    check([n for n in classes if n not in models])
    states = {}
    for name in models:
        model = empty(classes[name], folder / name)
        states[name] = model, _convert(family, name, checkpoint, model, options)
    check([n for n in models if states[n][1] is None])
    for name in models:
        dtype = torch_dtype.get(name, torch_dtype.get("default")) if isinstance(torch_dtype, dict) else torch_dtype
        model, state = states.pop(name)  # the file's tensors go as each model takes them
        if state is not None:
            kwargs[name] = build(model, folder / name, state, dtype, quantizer(checkpoint))
    return pipeline_cls.from_pretrained(folder, torch_dtype=torch_dtype, **kwargs)
