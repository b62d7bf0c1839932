"""The base pipeline: components resolved through the registry, Diffusers' folder layout.

A pipeline folder holds ``model_index.json`` plus one subfolder per component::

    {"_class_name": "StableDiffusionPipeline",
     "unet": ["diffusers", "UNet2DConditionModel"],
     "text_encoder": ["transformers", "CLIPTextModel"],
     "safety_checker": [null, null],
     "requires_safety_checker": false, ...}

``["diffusers", X]`` resolves ``X`` through the plugin registry, ``["transformers", X]``
through transformers; other (non-list) entries are constructor arguments.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

import torch

from kernel.config import ConfigMixin, read_json
from kernel.engine import Engine
from kernel.hub import is_local, resolve_file, resolve_folder, split_hub_kwargs
from kernel.modeling import gc_paused, plugin_method
from kernel.protocols import kind_of
from kernel.tasks import TaskMixin

logger = logging.getLogger(__name__)

#: Libraries a model_index.json may name, and how to import their classes.
TRANSFORMERS = "transformers"
OUR_LIBRARY_NAMES = ("diffusers", "kernel")


def _library_of(obj: Any) -> str:
    """What to write in model_index.json for a component object."""
    from kernel.registry import get_registry

    name = type(obj).__name__
    module = type(obj).__module__.split(".")[0]
    if module == TRANSFORMERS:
        return TRANSFORMERS
    if get_registry().has(name):
        return "diffusers"  # Diffusers resolves its own class of the same name
    return module


def resolve_class(library: str | None, class_name: str | None, *, component: str, trust_remote_code: bool = False):
    """The class a ``[library, class_name]`` model_index entry names."""
    if library is None or class_name is None:
        return None
    from kernel.registry import get_registry

    # Diffusers names one of its pipeline sub-packages as the library of a model defined there (Stable Audio's
    # ["stable_audio", "StableAudioProjectionModel"]): an installed plugin's class of that name is the one.
    if library in OUR_LIBRARY_NAMES or (library != TRANSFORMERS and get_registry().has(class_name)):
        return get_registry().resolve(class_name)
    if library == TRANSFORMERS:
        import transformers

        try:
            return getattr(transformers, class_name)
        except AttributeError:
            raise ValueError(
                f"model_index.json component {component!r} names transformers.{class_name}, "
                "which this transformers version does not have"
            ) from None
    if not trust_remote_code:
        raise ValueError(
            f"model_index.json component {component!r} names {library}.{class_name}; loading code from "
            f"library {library!r} needs trust_remote_code=True"
        )
    import importlib

    return getattr(importlib.import_module(library), class_name)


class DiffusionPipeline(Engine, TaskMixin, ConfigMixin):
    """Base of every pipeline: components, loading and saving, devices, offload, and (through
    :class:`kernel.engine.Engine` and :class:`kernel.tasks.TaskMixin`) the one denoising loop and the
    shared tasks.

    Subclasses call ``self.register_modules(unet=unet, ...)`` in ``__init__`` and may set
    ``_optional_components``, ``model_cpu_offload_seq`` (``"text_encoder->unet->vae"``),
    ``_callback_tensor_inputs`` and ``_exclude_from_cpu_offload``.
    """

    component_kind = "pipeline"
    config_name = "model_index.json"
    _optional_components: list[str] = []
    model_cpu_offload_seq: str | None = None
    _callback_tensor_inputs: list[str] = ["latents"]
    _exclude_from_cpu_offload: list[str] = []

    # ---------------------------------------------------------------- registration
    def register_modules(self, **modules: Any) -> None:
        names = self.__dict__.setdefault("_component_keys", [])
        for name, module in modules.items():
            if name not in names:
                names.append(name)
            entry = [None, None] if module is None else [_library_of(module), type(module).__name__]
            self.register_to_config(**{name: entry})
            object.__setattr__(self, name, module)

    def __setattr__(self, name: str, value: Any) -> None:
        internal = self.__dict__.get("_internal_dict")
        if internal is not None and name in self.__dict__.get("_component_keys", ()):
            entry = [None, None] if value is None else [_library_of(value), type(value).__name__]
            self.register_to_config(**{name: entry})
        object.__setattr__(self, name, value)

    @classmethod
    def _init_parameters(cls) -> dict[str, inspect.Parameter]:
        params = dict(inspect.signature(cls.__init__).parameters)
        params.pop("self", None)
        return {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}

    def _component_names(self) -> list[str]:
        """The names given to ``register_modules`` (config values such as a list of layer names are not)."""
        return list(self.__dict__.get("_component_keys", ()))

    @property
    def components(self) -> dict[str, Any]:
        """Every component by name (the objects themselves, not copies)."""
        return {name: getattr(self, name, None) for name in self._component_names()}

    # ---------------------------------------------------------------- devices
    def _modules(self) -> dict[str, torch.nn.Module]:
        return {k: v for k, v in self.components.items() if isinstance(v, torch.nn.Module)}

    @property
    def device(self) -> torch.device:
        for module in self._modules().values():
            return getattr(module, "device", None) or next(module.parameters()).device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for module in self._modules().values():
            dtype = getattr(module, "dtype", None)
            if dtype is not None:
                return dtype
        return torch.float32

    @property
    def _execution_device(self) -> torch.device:
        target = getattr(self, "_offload_device", None)
        if target is not None:
            return torch.device(target)
        return self.device

    def to(self, *args: Any, **kwargs: Any) -> "DiffusionPipeline":
        """``to(device)``, ``to(dtype)``, ``to(device, dtype)`` or keywords, on every module component."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        if kwargs:
            raise TypeError(f"Pipeline.to got unexpected keyword arguments: {sorted(kwargs)}")
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif isinstance(arg, (str, torch.device, int)):
                device = arg
            else:
                raise TypeError(f"Pipeline.to takes a device and/or a torch.dtype, got {arg!r}")
        if device is not None and getattr(self, "_offload_device", None) is not None:
            raise ValueError("this pipeline uses CPU offloading; call to(device) before enabling offload, not after")
        self.disable_cuda_graphs()  # captured graphs point at the old tensors
        for module in self._modules().values():
            module.to(device=device, dtype=dtype)
        return self

    # ---------------------------------------------------------------- progress
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self._progress_bar_config = kwargs

    def progress_bar(self, iterable=None, total=None):
        from tqdm.auto import tqdm

        config = dict(getattr(self, "_progress_bar_config", {}))
        if iterable is not None:
            return tqdm(iterable, **config)
        if total is not None:
            return tqdm(total=total, **config)
        raise ValueError("progress_bar needs iterable= or total=")

    # ---------------------------------------------------------------- conditioning hooks
    @property
    def conditioning_hooks(self) -> list:
        """Hooks that contribute to every denoiser evaluation (:class:`kernel.engine.ConditioningHook`)."""
        return self.__dict__.setdefault("_conditioning_hooks", [])

    # ---------------------------------------------------------------- memory switches
    # Diffusers' memory switches come from a plugin (kernel-memory, see docs/memory.md); the base keeps
    # remove_all_hooks and maybe_free_model_hooks, which undo CPU offload.
    enable_attention_slicing = plugin_method("enable_attention_slicing", "Attention in slices of heads")
    disable_attention_slicing = plugin_method("disable_attention_slicing", "Attention in one piece again")
    enable_vae_slicing = plugin_method("enable_vae_slicing", "Decode the batch one image at a time")
    disable_vae_slicing = plugin_method("disable_vae_slicing", "Decode the batch at once again")
    enable_vae_tiling = plugin_method("enable_vae_tiling", "Decode (and encode) in overlapping tiles")
    disable_vae_tiling = plugin_method("disable_vae_tiling", "Decode in one piece again")
    enable_model_cpu_offload = plugin_method("enable_model_cpu_offload", "One model at a time on the accelerator")
    enable_sequential_cpu_offload = plugin_method("enable_sequential_cpu_offload", "One layer at a time (least memory)")
    enable_layerwise_casting = plugin_method("enable_layerwise_casting", "fp8 weight storage for the denoiser")
    enable_group_offload = plugin_method("enable_group_offload", "Group offloading for every model component")
    enable_auto_memory = plugin_method("enable_auto_memory", "Pick the memory switches that fit a budget")
    memory_plan = plugin_method("memory_plan", "The plan enable_auto_memory chose")
    hf_device_map: dict | None = None  # set by device_map="balanced"
    reset_device_map = plugin_method("reset_device_map", "Undo device_map='balanced'", "kernel-distributed")

    def maybe_free_model_hooks(self) -> None:
        """After a call under model offload, put every model back on the CPU."""
        for hook in getattr(self, "_offload_hooks", []) or []:
            hook.offload()

    def remove_all_hooks(self) -> None:
        from accelerate.hooks import remove_hook_from_module

        for module in self._modules().values():
            remove_hook_from_module(module, recurse=True)
        self._offload_hooks = []
        self._offload_device = None
        self._offload_kind = None

    # ---------------------------------------------------------------- CUDA graphs
    #: Component names that hold the network a denoising loop calls every step, in lookup order.
    _denoiser_names: tuple[str, ...] = ("unet", "transformer", "prior", "decoder")

    def _denoiser(self) -> tuple[str, torch.nn.Module] | None:
        modules = self._modules()
        for name in self._denoiser_names:
            if name in modules:
                return name, modules[name]
        return None

    def enable_cuda_graphs(self, warmup: int = 2) -> None:
        """Replay the denoiser's forward from CUDA graphs: one launch per step, outputs bit-identical.

        Each new input signature (sizes, batch, dtypes) is captured once after ``warmup`` eager calls;
        later steps copy their inputs into the captured buffers and replay (see
        :mod:`kernel.cuda_graphs`).  Call it after ``to("cuda")``; ``to()`` and the offload switches
        turn it off.  It needs the denoiser on a CUDA device and no CPU offload hooks.
        """
        from kernel.cuda_graphs import GraphedForward

        found = self._denoiser()
        if found is None:
            raise ValueError(f"{type(self).__name__} has no denoiser component ({', '.join(self._denoiser_names)}) "
                             "for enable_cuda_graphs")
        name, module = found
        if getattr(self, "_offload_kind", None):
            raise ValueError("enable_cuda_graphs does not combine with CPU offload (a graph keeps the addresses of "
                             "weights the hooks move); call remove_all_hooks() and to('cuda') first")
        device = next(module.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"enable_cuda_graphs needs the {name} on a CUDA device (pipe.to('cuda')); it is on {device}")
        self.disable_cuda_graphs()
        module.forward = GraphedForward(module.forward, device, warmup)

    def disable_cuda_graphs(self) -> None:
        """Back to eager calls; the captured graphs and their memory are released."""
        from kernel.cuda_graphs import GraphedForward

        found = self._denoiser()
        if found is not None and isinstance(found[1].__dict__.get("forward"), GraphedForward):
            del found[1].forward

    # ---------------------------------------------------------------- images
    @staticmethod
    def numpy_to_pil(images: Any) -> list:
        from kernel.outputs import numpy_to_pil

        return numpy_to_pil(images)

    # ---------------------------------------------------------------- saving
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        **_: Any,
    ) -> None:
        """Write every component into its subfolder and ``model_index.json`` last."""
        folder = Path(save_directory)
        if folder.is_file():
            raise ValueError(f"save_directory={str(folder)!r} is a file; give a folder")
        folder.mkdir(parents=True, exist_ok=True)
        for name, component in self.components.items():
            if component is None:
                continue
            target = folder / name
            kwargs: dict[str, Any] = {}
            if isinstance(component, torch.nn.Module):
                kwargs = {"safe_serialization": safe_serialization, "variant": variant}
                if max_shard_size is not None:
                    kwargs["max_shard_size"] = max_shard_size
            if hasattr(component, "save_pretrained"):
                component.save_pretrained(target, **kwargs)
            elif hasattr(component, "save_config"):
                component.save_config(target)
            else:
                raise TypeError(f"component {name!r} ({type(component).__name__}) cannot be saved")
        self.save_config(folder)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pipe(cls, pipeline: "DiffusionPipeline", **overrides: Any) -> "DiffusionPipeline":
        """Build ``cls`` from another pipeline's components (shared, not copied) plus overrides."""
        if not isinstance(pipeline, DiffusionPipeline):
            raise TypeError(f"from_pipe takes a DiffusionPipeline, got {type(pipeline).__name__}")
        params = cls._init_parameters()
        components = pipeline.components
        available = {**components, **{k: v for k, v in pipeline.config.items()
                                      if not k.startswith("_") and k not in components}}
        unknown = [k for k in overrides if k not in params]
        if unknown:
            raise ValueError(f"{cls.__name__}.from_pipe got arguments it does not take: {unknown}")
        kwargs = {}
        for name, p in params.items():
            if name in overrides:
                kwargs[name] = overrides[name]
            elif name in available:
                kwargs[name] = available[name]
            elif p.default is inspect.Parameter.empty:
                if name in cls._optional_components:
                    kwargs[name] = None
                else:
                    raise ValueError(f"{cls.__name__}.from_pipe needs {name!r}, which {type(pipeline).__name__} lacks")
        new = cls(**kwargs)
        if hasattr(pipeline, "_progress_bar_config"):
            new.set_progress_bar_config(**pipeline._progress_bar_config)
        return new

    @classmethod
    def from_single_file(cls, source: Any, **kwargs: Any) -> "DiffusionPipeline":
        """A pipeline from one checkpoint file in its original layout (:func:`kernel.checkpoints.load_pipeline`)."""
        from kernel.checkpoints import load_pipeline

        return load_pipeline(cls, source, **kwargs)

    @classmethod
    def load_model_index(cls, source: str | os.PathLike, **hub_kwargs: Any) -> dict:
        return read_json(resolve_file(source, cls.config_name, **hub_kwargs), what="model_index.json")

    @classmethod
    @gc_paused
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "DiffusionPipeline":
        """Load a pipeline folder or Hub repo; keyword arguments named like a component replace it."""
        source = pretrained_model_name_or_path
        hub = split_hub_kwargs(kwargs)
        torch_dtype = kwargs.pop("torch_dtype", None)
        variant = kwargs.pop("variant", None)
        device_map = kwargs.pop("device_map", None)
        if device_map is not None and not isinstance(device_map, (str, torch.device)):
            raise TypeError(f"device_map for a pipeline must be a device such as 'cuda' or 'cpu', got "
                            f"{type(device_map).__name__}")
        place = None  # device_map="balanced": whole components spread over the GPUs (kernel-distributed)
        if str(device_map) in ("balanced", "auto"):
            from kernel.registry import get_registry

            if not get_registry().has("balanced_device_map"):
                raise ValueError(f"device_map={device_map!r} needs the kernel-distributed plugin (pip install "
                                 "kernel-distributed); or pass a single device such as 'cuda'")
            place = get_registry().resolve("balanced_device_map")(str(device_map), kwargs.pop("max_memory", None))
            device_map = None
        use_safetensors = kwargs.pop("use_safetensors", None)
        trust_remote_code = kwargs.pop("trust_remote_code", False)
        quantization = kwargs.pop("quantization_config", None)
        for ignored in ("low_cpu_mem_usage", "provider", "sess_options"):
            kwargs.pop(ignored, None)

        index = cls.load_model_index(source, **hub)
        pipeline_cls = cls._pipeline_class_for(index)
        params = pipeline_cls._init_parameters()
        entries = {k: v for k, v in index.items() if not k.startswith("_")}
        component_names = [k for k, v in entries.items() if _is_component_entry(v, params.get(k))]

        unknown = [k for k in kwargs if k not in params]
        if unknown:
            raise TypeError(f"{pipeline_cls.__name__}.from_pretrained got unexpected arguments: {unknown}; "
                            f"components and options it takes: {sorted(params)}")

        if not is_local(source):
            patterns = _download_patterns(index, component_names, kwargs, variant, use_safetensors)
            folder = resolve_folder(source, allow_patterns=patterns, **hub)
        else:
            folder = resolve_folder(source)

        if quantization is not None:  # a PipelineQuantizationConfig: one config per component, checked up front
            if not callable(getattr(quantization, "component_configs", None)):
                raise TypeError(f"quantization_config must be a PipelineQuantizationConfig, not {quantization!r}")
            quantization = quantization.component_configs({n: resolve_class(*(list(entries[n]) + [None, None])[:2],
                component=n, trust_remote_code=trust_remote_code) for n in component_names if n in params
                and n not in kwargs})
        loaded: dict[str, Any] = {}
        for name in component_names:
            if name not in params:
                logger.info("%s does not take component %r; skipped", pipeline_cls.__name__, name)
                continue
            library, class_name = (list(entries[name]) + [None, None])[:2]
            if name in kwargs:
                loaded[name] = _check_override(name, kwargs.pop(name), library, class_name, trust_remote_code)
                continue
            component_cls = resolve_class(library, class_name, component=name, trust_remote_code=trust_remote_code)
            if component_cls is None:
                loaded[name] = None
                continue
            dtype = torch_dtype.get(name, torch_dtype.get("default")) if isinstance(torch_dtype, dict) else torch_dtype
            loaded[name] = _load_component(component_cls, folder, name, library, dtype, variant, use_safetensors,
                                           device_map, (quantization or {}).get(name))
        # Config values from the index, then user values.
        for key, value in entries.items():
            if key in params and key not in loaded and key not in component_names:
                loaded[key] = value
        loaded.update(kwargs)
        for name, p in params.items():
            if name not in loaded and p.default is inspect.Parameter.empty:
                if name in pipeline_cls._optional_components:
                    loaded[name] = None
                else:
                    raise ValueError(f"{pipeline_cls.__name__} needs component {name!r}, which "
                                     f"{source} does not provide (model_index.json has {component_names})")
        pipe = pipeline_cls(**loaded)
        if device_map is not None:
            pipe.to(device_map)
        return place(pipe) if place is not None else pipe

    @classmethod
    def _pipeline_class_for(cls, index: dict) -> type:
        """The class to build: ``cls`` itself, or the index's class when ``cls`` is generic."""
        name = index.get("_class_name")
        if cls is not DiffusionPipeline and not getattr(cls, "_is_auto", False):
            return cls
        if not isinstance(name, str):
            raise ValueError("model_index.json has no '_class_name' naming the pipeline class")
        from kernel.registry import get_registry

        resolved = get_registry().resolve(name)
        if getattr(cls, "_is_auto", False):
            return cls._select(resolved)
        return resolved


def _is_component_entry(value: Any, param: inspect.Parameter | None) -> bool:
    """Whether a model_index.json entry names a component (``[library, class]``) rather than a config
    value that happens to be a list (``"pag_applied_layers": ["mid", "up"]``): components are the
    constructor parameters without a default or defaulting to None."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return False
    if not all(v is None or isinstance(v, str) for v in value):
        return False
    return param is None or param.default is inspect.Parameter.empty or param.default is None


def _check_override(name: str, value: Any, library: str | None, class_name: str | None, trust: bool) -> Any:
    if value is None:
        return None
    expected = None
    try:
        expected = resolve_class(library, class_name, component=name, trust_remote_code=trust)
    except Exception:  # noqa: BLE001 - the plugin may be absent; the override stands on its own
        expected = None
    if expected is None:
        return value
    if kind_of(expected) == "scheduler":
        if kind_of(value) != "scheduler":
            raise TypeError(f"component override {name}= must be a scheduler (a class declaring "
                            f"component_kind = 'scheduler'), got {type(value).__name__}")
        return value
    if issubclass(expected, torch.nn.Module) and not isinstance(value, torch.nn.Module):
        raise TypeError(f"component override {name}= must be a torch.nn.Module like {class_name}, "
                        f"got {type(value).__name__}")
    if not issubclass(expected, torch.nn.Module) and not isinstance(value, expected) and \
            type(value).__name__.replace("Fast", "") != class_name.replace("Fast", ""):
        raise TypeError(f"component override {name}= must be a {class_name}, got {type(value).__name__}")
    return value


def _load_component(component_cls, folder: Path, name: str, library: str | None, dtype, variant, use_safetensors,
                    device_map, quantization_config=None):
    sub = folder / name
    if not sub.is_dir():
        raise FileNotFoundError(f"model_index.json lists component {name!r} but {sub} does not exist")
    if kind_of(component_cls) == "scheduler" or not hasattr(component_cls, "from_pretrained"):
        return component_cls.from_pretrained(folder, subfolder=name) if hasattr(component_cls, "from_pretrained") \
            else component_cls.from_config(read_json(sub / "config.json"))
    kwargs: dict[str, Any] = {}
    is_module = isinstance(component_cls, type) and issubclass(component_cls, torch.nn.Module)
    if is_module:
        if dtype is not None:
            kwargs["torch_dtype"] = dtype
        if variant is not None:
            kwargs["variant"] = variant
        if use_safetensors is not None:
            kwargs["use_safetensors"] = use_safetensors
        if device_map is not None:
            kwargs["device_map"] = device_map
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
    if library == TRANSFORMERS:
        if is_module and variant is not None and not any(sub.glob(f"*.{variant}.*")):
            kwargs.pop("variant")  # transformers falls back badly; the non-variant weights are the ones present
        if is_module:
            # transformers 5 defaults to the dtype in config.json; Diffusers (and we) default to float32.
            import transformers

            key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
            kwargs[key] = kwargs.pop("torch_dtype", None) or torch.float32
        if "device_map" in kwargs:
            kwargs["device_map"] = str(kwargs["device_map"])
        return component_cls.from_pretrained(str(sub), **kwargs)
    return component_cls.from_pretrained(folder, subfolder=name, **kwargs)


def _download_patterns(index: dict, names: list[str], overrides: dict, variant: str | None,
                       use_safetensors: bool | None) -> list[str]:
    """Only the files the pipeline needs: configs, tokenizer files, and the chosen weights."""
    patterns = ["model_index.json"]
    for name in names:
        entry = index.get(name)
        if name in overrides or not isinstance(entry, (list, tuple)) or entry[0] is None:
            continue
        patterns += [f"{name}/*.json", f"{name}/*.txt", f"{name}/*.model"]
        weights = "*.safetensors" if use_safetensors is not False else "*.bin"
        if variant:
            patterns += [f"{name}/*.{variant}.safetensors", f"{name}/*.{variant}*.safetensors",
                         f"{name}/*.safetensors.index.{variant}.json"]
        else:
            patterns += [f"{name}/{weights}"]
    return patterns
