"""The model base class: Diffusers-format ``from_pretrained`` / ``save_pretrained``.

Loading builds the module with its parameters on the meta device (no random
initialisation, no memory) and then assigns the tensors read from safetensors
straight into place, already on the target device and in the target dtype.
Missing keys are an error naming them; unexpected keys are reported.

Files follow Diffusers' naming, so folders move between the two libraries:

* ``diffusion_pytorch_model.safetensors`` (``.fp16.safetensors`` with ``variant="fp16"``),
* sharded: ``diffusion_pytorch_model-00001-of-00002.safetensors`` plus
  ``diffusion_pytorch_model.safetensors.index.json`` (variant: ``...index.fp16.json``),
* legacy ``diffusion_pytorch_model.bin``, read only through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import gc

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

import torch

from kernel.config import ConfigMixin, read_json
from kernel.hub import resolve_folder, split_hub_kwargs
from kernel.io import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

WEIGHTS_STEM = "diffusion_pytorch_model"
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def add_variant(filename: str, variant: str | None) -> str:
    """``a.safetensors`` -> ``a.fp16.safetensors``; ``a.safetensors.index.json`` -> ``a.safetensors.index.fp16.json``."""
    if not variant:
        return filename
    head, _, ext = filename.rpartition(".")
    return f"{head}.{variant}.{ext}"


def weight_files(folder: Path, variant: str | None, use_safetensors: bool | None, stem: str = WEIGHTS_STEM) -> list[Path]:
    """The weight files of one model folder, in load order; a clear error when none fits."""
    candidates = []
    if use_safetensors is not False:
        candidates += [(add_variant(f"{stem}.safetensors.index.json", variant), True),
                       (add_variant(f"{stem}.safetensors", variant), False)]
    if use_safetensors is not True:
        candidates += [(add_variant(f"{stem}.bin.index.json", variant), True),
                       (add_variant(f"{stem}.bin", variant), False)]
    for name, is_index in candidates:
        path = folder / name
        if not path.is_file():
            continue
        if not is_index:
            return [path]
        index = read_json(path, what="weights index")
        if not isinstance(index.get("weight_map"), dict):
            raise ValueError(f"weights index {path} has no 'weight_map' object")
        shards = sorted(set(index["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise FileNotFoundError(f"weights index {path} names shards that are missing: {missing}")
        return [folder / s for s in shards]
    looked = ", ".join(n for n, _ in candidates)
    if variant:
        present = sorted(p.name for p in folder.glob(f"{stem}*"))
        raise ValueError(
            f"variant={variant!r}: no weights for that variant in {folder} (looked for {looked}; found {present or 'none'})"
        )
    raise FileNotFoundError(f"no model weights in {folder} (looked for {looked})")


def read_state_dict(
    files: Iterable[Path],
    device: torch.device | str | None = "cpu",
    dtype: torch.dtype | None = None,
    keep_fp32: tuple[str, ...] = (),
    device_for: Any = None,
) -> dict[str, torch.Tensor]:
    """Read tensors from safetensors (or legacy ``.bin`` via ``weights_only``) onto ``device`` in ``dtype``.

    ``files`` may also hold already-read tensors (a :class:`kernel.checkpoints.Checkpoint` or a dict).
    ``device_for(key)`` may pick a device per tensor (device maps).  Floating tensors under a
    ``keep_fp32`` module prefix keep float32.
    """
    from kernel.checkpoints import Checkpoint

    out: dict[str, torch.Tensor] = {}
    for file in files:
        checkpoint = file if isinstance(file, Checkpoint) else Checkpoint(file)
        for key in checkpoint:
            t = checkpoint[key]
            if dtype is not None and t.is_floating_point():
                t = t.to(torch.float32 if any(key.startswith(p + ".") or key == p for p in keep_fp32) else dtype)
            dev = device_for(key) if device_for else device
            out[key] = t.to(dev) if dev is not None and str(dev) != "cpu" else t
    return out


def gc_paused(fn):
    """``fn`` with Python's cyclic garbage collector paused: a load builds tens of thousands of objects that all
    live on, so the collection passes their allocations trigger walk the whole heap for nothing."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper


def plugin_method(name: str, doc: str, package: str = "kernel-memory"):
    """A method whose work a plugin registers under ``name``: a function ``fn(self, *args, **kwargs)``."""

    def method(self, *args: Any, **kwargs: Any) -> Any:
        from kernel.registry import ComponentNotFoundError, get_registry

        if not get_registry().has(name):
            raise ComponentNotFoundError(f"{type(self).__name__}.{name} comes from a plugin, and none installed "
                                         f"provides {name!r} (pip install {package})")
        return get_registry().resolve(name)(self, *args, **kwargs)

    method.__name__, method.__qualname__, method.__doc__ = name, name, f"{doc} (plugin function ``{name}``)."
    return method


def quantizer_for(saved: dict | None, given: Any) -> Any:
    """The quantizer of one load: ``given`` (a quantizer plugin's config) quantizes full-precision weights;
    ``saved`` (config.json's ``quantization_config``) reloads quantized ones (class registered as its quant_method)."""
    config = given if saved is None else saved
    if config is None:
        return None
    if saved is not None and given is not None:
        logger.warning("the weights are quantized already (%s); quantization_config= is ignored", saved["quant_method"])
    if isinstance(config, dict):
        from kernel.registry import get_registry

        method = str(config.get("quant_method"))
        if not get_registry().has(method):
            raise ValueError(f"quantization_config has quant_method={method!r}, which no installed quantizer plugin "
                             "registers (kernel plugins lists what is installed)")
        config = get_registry().resolve(method).from_dict(config)
    if not callable(getattr(config, "quantizer", None)):
        raise TypeError(f"quantization_config must be a quantizer plugin's config (with quantizer()), got {config!r}")
    return config.quantizer(pre_quantized=saved is not None)


def _check_device_map(device_map: Any) -> Any:
    if device_map is None or isinstance(device_map, (dict, torch.device, int)):
        return device_map
    if isinstance(device_map, str):
        if device_map in DEVICE_MAP_STRATEGIES:
            return device_map
        try:
            return torch.device(device_map)
        except RuntimeError:
            pass
    raise ValueError(
        f"device_map={device_map!r} is not supported; give a device ('cpu', 'cuda', 'cuda:1', an int), "
        f"a dict of module name to device, or one of {', '.join(DEVICE_MAP_STRATEGIES)}"
    )


class ModelMixin(torch.nn.Module, ConfigMixin):
    """Base of every model: config plus Diffusers-format weights.

    Class attributes a model may set: ``_no_split_modules`` (block class names a device map must
    not split), ``_keep_in_fp32_modules`` (module name prefixes kept in float32),
    ``_supports_gradient_checkpointing``.
    """

    config_name = "config.json"
    _no_split_modules: list[str] | None = None
    _keep_in_fp32_modules: list[str] | None = None
    _supports_gradient_checkpointing = False
    #: Block class names repeated through the model; ``compile_repeated_blocks`` compiles each
    #: once (regional compilation). Defaults to ``_no_split_modules``.
    _repeated_blocks: list[str] | None = None

    def __getattr__(self, name: str) -> Any:
        # Let ``model.in_channels`` read the config like Diffusers allows, after module lookup.
        try:
            return super().__getattr__(name)
        except AttributeError:
            internal = self.__dict__.get("_internal_dict")
            if internal is not None and name in internal:
                return internal[name]
            raise

    # ---------------------------------------------------------------- properties
    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point() and p.element_size() > 1:  # fp8 is a storage dtype (layerwise casting)
                return p.dtype
        for b in self.buffers():
            if b.is_floating_point():
                return b.dtype
        return torch.float32

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes held by the parameters (and buffers): what quantization and fp8 storage shrink."""
        tensors = list(self.parameters()) + (list(self.buffers()) if return_buffers else [])
        return sum(t.nelement() * t.element_size() for t in tensors)

    # ---------------------------------------------------------------- quantization and memory switches
    dequantize = plugin_method("dequantize", "Undo a quantization_config load: full-precision layers again")
    enable_layerwise_casting = plugin_method("enable_layerwise_casting", "Weights stored in fp8, upcast per layer")
    enable_group_offload = plugin_method("enable_group_offload", "Weights moved to the accelerator group by group")

    # ---------------------------------------------------------------- gradient checkpointing
    def enable_gradient_checkpointing(self) -> None:
        if not self._supports_gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing")
        for m in self.modules():
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        for m in self.modules():
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    # ---------------------------------------------------------------- compilation
    def compile_repeated_blocks(self, *args: Any, **compile_kwargs: Any) -> int:
        """Compile every repeated block with ``torch.compile`` (regional compilation).

        Blocks of one class share code, so Dynamo compiles the block once and reuses it for the
        other instances: compile time is that of one block, not of the whole network, while the
        blocks (where the time goes) run compiled.  Returns the number of blocks compiled.
        """
        names = set(self._repeated_blocks or self._no_split_modules or ())
        if not names:
            raise ValueError(f"{type(self).__name__} declares no _repeated_blocks to compile")
        count = 0
        for module in self.modules():
            if type(module).__name__ in names:
                module.compile(*args, **compile_kwargs)
                count += 1
        if count == 0:
            raise ValueError(f"{type(self).__name__} has no submodule of the classes {sorted(names)}")
        return count

    # ---------------------------------------------------------------- saving
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str = "10GB",
        **_: Any,
    ) -> None:
        """Write ``config.json`` and the weights (sharded past ``max_shard_size``), each file atomically."""
        if not safe_serialization:
            raise ValueError("safe_serialization=False is not supported: weights are always saved as safetensors")
        folder = Path(save_directory)
        if folder.is_file():
            raise ValueError(f"save_directory={str(folder)!r} is a file; give a folder")
        if not is_main_process:
            return
        folder.mkdir(parents=True, exist_ok=True)
        from huggingface_hub import split_torch_state_dict_into_shards
        from safetensors.torch import save_file

        state = _unshared(self.state_dict())
        pattern = add_variant(WEIGHTS_STEM + "{suffix}.safetensors", variant)
        split = split_torch_state_dict_into_shards(state, filename_pattern=pattern, max_shard_size=max_shard_size)
        written = set()
        for filename, keys in split.filename_to_tensors.items():
            with atomic_path(folder / filename) as tmp:
                save_file({k: state[k] for k in keys}, str(tmp), metadata={"format": "pt"})
            written.add(filename)
        index_name = add_variant(f"{WEIGHTS_STEM}.safetensors.index.json", variant)
        if split.is_sharded:
            index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                     "weight_map": split.tensor_to_filename}
            atomic_write_text(folder / index_name, json.dumps(index, indent=2, sort_keys=True) + "\n")
            written.add(index_name)
        # Drop weight files of an earlier save that the new one replaces (same variant only).
        stale = re.compile(re.escape(WEIGHTS_STEM) + r"(-\d{5}-of-\d{5})?" +
                           (re.escape(f".{variant}") if variant else "") + r"\.safetensors(\.index" +
                           (re.escape(f".{variant}") if variant else "") + r"\.json)?$")
        for old in folder.glob(f"{WEIGHTS_STEM}*"):
            if old.name not in written and stale.fullmatch(old.name):
                old.unlink()
        self.save_config(folder)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_single_file(cls, source: Any, **kwargs: Any):
        """This model from one checkpoint file in its original layout (:func:`kernel.checkpoints.load_model`)."""
        from kernel.checkpoints import load_model

        return load_model(cls, source, **kwargs)

    @classmethod
    @gc_paused
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        device_map: Any = None,
        use_safetensors: bool | None = None,
        output_loading_info: bool = False,
        max_memory: dict | None = None,
        quantization_config: Any = None,
        **kwargs: Any,
    ):
        """Load a Diffusers-format model folder (or Hub repo) straight into place, quantized if asked or saved so."""
        if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
            raise TypeError(f"torch_dtype must be a torch.dtype such as torch.float16, got {torch_dtype!r}")
        device_map = _check_device_map(device_map)
        hub = split_hub_kwargs(kwargs)
        for ignored in ("low_cpu_mem_usage", "revision_subfolder"):
            kwargs.pop(ignored, None)
        patterns = ["*.json", "*.safetensors"] if use_safetensors is not False else None
        folder = resolve_folder(pretrained_model_name_or_path, subfolder, allow_patterns=patterns, **hub)
        config = read_json(folder / cls.config_name, what=f"{cls.__name__} config") if (
            folder / cls.config_name).is_file() else None
        if config is None:
            raise FileNotFoundError(f"no {cls.config_name} in {folder}: not a model folder")
        files = weight_files(folder, variant, use_safetensors)
        return cls._from_config_and_files(
            config, files, torch_dtype=torch_dtype, device_map=device_map, output_loading_info=output_loading_info,
            max_memory=max_memory, quantizer=quantizer_for(config.get("quantization_config"), quantization_config),
            **kwargs,
        )

    @classmethod
    def _from_config_and_files(cls, config, files, torch_dtype=None, device_map=None, output_loading_info=False,
                               max_memory=None, quantizer=None, model=None, **overrides):
        from accelerate import init_empty_weights

        if model is None:  # (single-file loading passes the model it converted for, already on the meta device)
            with init_empty_weights(include_buffers=False):
                model = cls.from_config(config, **overrides)
        if quantizer is not None:  # swaps layers on the meta model; picks the dtype of the layers it keeps
            torch_dtype = quantizer.prepare(model, torch_dtype)
        keep = tuple(cls._keep_in_fp32_modules or ()) if torch_dtype not in (None, torch.float32) else ()

        device_for = None
        device: Any = "cpu"
        if isinstance(device_map, (torch.device, int)):
            device = torch.device("cuda", device_map) if isinstance(device_map, int) else device_map
        elif isinstance(device_map, str):  # a strategy
            from accelerate import infer_auto_device_map
            from accelerate.utils import get_balanced_memory

            no_split = cls._no_split_modules or []
            if device_map != "sequential":
                max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                                 dtype=torch_dtype, low_zero=device_map == "balanced_low_0")
            device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split,
                                               dtype=torch_dtype)
        if isinstance(device_map, dict):
            placement = dict(device_map)

            def device_for(key: str) -> Any:  # longest matching module prefix
                name = key
                while True:
                    if name in placement:
                        return placement[name]
                    if "." not in name:
                        return placement.get("", "cpu")
                    name = name.rsplit(".", 1)[0]

        state = read_state_dict(files, device=device, dtype=torch_dtype, keep_fp32=keep, device_for=device_for)
        placed = set(quantizer.load(model, state, device)) if quantizer is not None else set()  # pops what it takes
        result = model.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in result.missing_keys if k not in placed]
        if missing:
            raise ValueError(
                f"{cls.__name__}: the checkpoint ({', '.join(str(f) for f in files)}) lacks {len(missing)} "
                f"weights the model needs, e.g. {missing[:5]}"
            )
        if result.unexpected_keys:
            logger.warning("%s: ignored %d unexpected weights, e.g. %s", cls.__name__,
                           len(result.unexpected_keys), result.unexpected_keys[:5])
        # Buffers that are not in the checkpoint follow the model's dtype and device.
        for module in model.modules():
            for name, buf in list(module._buffers.items()):
                if buf is None:
                    continue
                target_dtype = torch_dtype if (torch_dtype is not None and buf.is_floating_point()) else buf.dtype
                if device_for is None and (buf.device != torch.device(device) or buf.dtype != target_dtype):
                    module._buffers[name] = buf.to(device=device, dtype=target_dtype)
        if isinstance(device_map, dict) and len(set(map(str, device_map.values()))) > 1:
            from accelerate import dispatch_model

            dispatch_model(model, device_map=device_map)
        model.eval()
        if output_loading_info:
            return model, {"missing_keys": missing, "unexpected_keys": list(result.unexpected_keys)}
        return model


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors with no storage shared between two keys (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out = {}
    for k, t in state.items():
        t = t.detach()
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key in seen:
            t = t.clone()
        seen.add(key)
        out[k] = t.contiguous()
    return out
