"""Diffusers' LoRA methods for a pipeline: a denoiser (UNet or transformer) and text encoders.

:class:`LoraLoaderMixin` serves SD 1.x/2.x and SDXL as it is; :mod:`kernel_lora.families` sets it up
for SD3, Flux and PixArt (their components, call argument and ``save_lora_weights`` arguments).

    pipe.load_lora_weights("./lora", adapter_name="style")         # folder, file, state dict or Hub id
    pipe.load_lora_weights("toy.safetensors", adapter_name="toy")  # kohya-ss files too
    pipe.set_adapters(["style", "toy"], adapter_weights=[0.7, {"unet": 0.5, "text_encoder": 1.0}])
    image = pipe(prompt, cross_attention_kwargs={"scale": 0.8}).images[0]
    pipe.fuse_lora(lora_scale=0.8); pipe.unfuse_lora()
    pipe.unload_lora_weights()                                      # the original modules again

Every adapter lives in peft layers inside the components (:mod:`kernel_lora.layers`); this mixin
keeps no state of its own besides the call-scale hook on the denoiser (a forward pre-hook that
applies ``cross_attention_kwargs["scale"]`` / ``joint_attention_kwargs["scale"]`` for the call).
A load validates the whole file against every component before it changes any, so a bad file
leaves the pipeline as it was.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

from kernel_layers.adapters import adapter_scale
from kernel_lora import layers
from kernel_lora.adapter import LoraAdapter
from kernel_lora.formats import LoraWeight, apply_metadata, parse, split_metadata
from kernel_lora.saving import write_lora
from kernel_lora.source import fetch

logger = logging.getLogger(__name__)

#: Components LoRA files address in SD / SDXL pipelines, in Diffusers' names.
LORA_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
_HOOK_ATTR = "_kernel_lora_scale_hooks"


def _argument_index(model: torch.nn.Module, argument: str) -> int | None:
    """Position of ``argument`` among ``model.forward``'s positional parameters (``None``: keyword only)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return positional.index(argument) if argument in positional else None


def _install_scale_hooks(model: torch.nn.Module, argument: str = "cross_attention_kwargs") -> None:
    """Apply ``<argument>["scale"]`` to the model's LoRA for each forward call, as Diffusers' UNet and
    transformers do (``cross_attention_kwargs`` for a UNet, ``joint_attention_kwargs`` for SD3 / Flux)."""
    if getattr(model, _HOOK_ATTR, None):
        return
    contexts: list = []
    index = _argument_index(model, argument)

    def before(module, args, kwargs):
        extra = kwargs.get(argument)
        if extra is None and index is not None and len(args) > index:
            extra = args[index]
        scale = extra.get("scale") if isinstance(extra, dict) else None
        ctx = adapter_scale(module, scale)
        ctx.__enter__()
        contexts.append(ctx)

    def after(module, args, kwargs, output):
        if contexts:
            contexts.pop().__exit__(None, None, None)

    handles = (model.register_forward_pre_hook(before, with_kwargs=True),
               model.register_forward_hook(after, with_kwargs=True, always_call=True))
    object.__setattr__(model, _HOOK_ATTR, handles)


def _remove_scale_hooks(model: torch.nn.Module) -> None:
    for handle in getattr(model, _HOOK_ATTR, None) or ():
        handle.remove()
    if _HOOK_ATTR in model.__dict__:
        object.__delattr__(model, _HOOK_ATTR)


class LoraLoaderMixin:
    """``load_lora_weights``, ``set_adapters``, ``fuse_lora``, ``save_lora_weights`` ... with Diffusers' arguments.

    A family sets ``_lora_components`` (the denoiser first), ``_lora_call_argument`` (the call and
    denoiser argument whose ``"scale"`` weighs the LoRA for one call; ``None``: none) and, where
    Diffusers fuses only some components by default, ``_lora_fuse_default``.
    """

    unet_name = "unet"
    text_encoder_name = "text_encoder"
    _lora_components: tuple[str, ...] = LORA_COMPONENTS
    _lora_call_argument: str | None = "cross_attention_kwargs"
    _lora_fuse_default: tuple[str, ...] | None = None

    # ------------------------------------------------------------------ components
    @property
    def _lora_denoiser(self) -> str:
        return self._lora_components[0]

    @property
    def _lora_loadable_modules(self) -> list[str]:
        names = self._component_names() if hasattr(self, "_component_names") else self._lora_components
        return [c for c in self._lora_components if c in names]

    def _lora_models(self) -> dict[str, torch.nn.Module]:
        """The LoRA components; a ``torch.compile``d one as the module it wraps (its layers are the same objects)."""
        return {c: getattr(m, "_orig_mod", m) for c in self._lora_loadable_modules
                if isinstance(m := getattr(self, c, None), torch.nn.Module)}

    def _all_adapters(self) -> list[str]:
        names: dict[str, None] = {}
        for model in self._lora_models().values():
            names.update(dict.fromkeys(layers.adapter_names(model)))
        return list(names)

    @property
    def lora_scale(self) -> float:
        """The call's ``cross_attention_kwargs["scale"]`` (``joint_attention_kwargs`` for SD3 / Flux), else 1."""
        argument = self._lora_call_argument
        extra = getattr(getattr(self, "_call", None), argument, None) if argument else None
        scale = extra.get("scale") if isinstance(extra, dict) else None
        return 1.0 if scale is None else float(scale)

    @property
    def num_fused_loras(self) -> int:
        return len(self.fused_loras)

    @property
    def fused_loras(self) -> set[str]:
        out: set[str] = set()
        for model in self._lora_models().values():
            out |= layers.merged_adapters(model)
        return out

    # ------------------------------------------------------------------ loading
    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, **kwargs) -> tuple[dict, None]:
        """``(state dict, None)``: the tensors as stored, from a dict, file, folder or Hub repo (no conversion;
        kohya names are resolved against a model at load time).  Diffusers returns network alphas second;
        here alphas stay in the state dict."""
        weight_name = kwargs.pop("weight_name", None)
        state, _, _ = fetch(pretrained_model_name_or_path_or_dict, weight_name, **kwargs)
        return state, None

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, weight_name: str | None = None,
                          adapter_name: str | None = None, hotswap: bool = False, **kwargs: Any) -> None:
        """Load a LoRA into the denoiser (UNet or transformer) and text encoder(s) as adapter ``adapter_name``
        (default ``default_<n>``).

        ``pretrained_model_name_or_path_or_dict``: a state dict, a ``.safetensors`` / ``.bin`` file, a
        folder, or a Hub repo id (``weight_name`` picks the file; ``subfolder``, ``revision``,
        ``cache_dir``, ``token``, ``local_files_only`` and ``HF_HUB_OFFLINE`` are honoured).  The new
        adapter becomes the active one in the components it adapts.

        ``hotswap=True`` writes the new LoRA into the loaded adapter ``adapter_name`` in place instead (same
        parameters, so a ``torch.compile``d model does not recompile): it must adapt the same layers of the
        same components, with ranks no larger than the loaded ones (see :meth:`enable_lora_hotswap`).
        """
        kwargs.pop("low_cpu_mem_usage", None)  # always: LoRA tensors go straight into place
        fetch_kwargs = {k: kwargs.pop(k) for k in ("subfolder", "use_safetensors", "cache_dir", "revision", "token",
                                                   "local_files_only", "force_download", "proxies") if k in kwargs}
        if kwargs:
            raise TypeError(f"load_lora_weights() got unexpected keyword arguments {sorted(kwargs)}")
        if adapter_name is not None and (not isinstance(adapter_name, str) or not adapter_name):
            raise ValueError(f"adapter_name must be a non-empty str or None, got {adapter_name!r}")
        loaded = self._all_adapters()
        if hotswap and adapter_name not in loaded:
            raise ValueError(f"hotswap=True replaces the weights of a loaded adapter: adapter_name must be one of "
                             f"{loaded}, got {adapter_name!r}")
        if adapter_name in loaded and not hotswap:
            raise ValueError(f"adapter_name {adapter_name!r} is already in use (loaded adapters: {loaded}); "
                             f"pick another name, delete_adapters({adapter_name!r}) first, or pass hotswap=True "
                             "to replace its weights in place")
        name = adapter_name or self._default_adapter_name(loaded)

        state, metadata, source = fetch(pretrained_model_name_or_path_or_dict, weight_name, **fetch_kwargs)
        if isinstance(pretrained_model_name_or_path_or_dict, dict) and not hotswap:
            # the adapter's parameters must not share memory with the caller's tensors: a later hot-swap
            # writes into them in place
            state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        parsed = parse(state, source, default_component=self._lora_denoiser)
        models = self._lora_models()
        missing = sorted(set(parsed.components) - set(models))
        if missing:
            raise ValueError(f"{source}: has {parsed.layout} LoRA weights for {missing}; {type(self).__name__} takes "
                             f"LoRA into {sorted(models)}; is it a LoRA for another architecture (SDXL, say)?")
        per_component = split_metadata(metadata)
        plan = []
        for component, weights in parsed.components.items():
            apply_metadata(weights, per_component.get(component), source, component)
            adapter = LoraAdapter(adapter_name=name, component=component, source=source, _weights=weights)
            plan.append((adapter, models[component], adapter._check(models[component])))
        if hotswap:
            self._hotswap(name, plan, source)
            return
        target_rank = self.__dict__.get("_lora_hotswap_rank")
        if target_rank is not None:
            too_large = [(a.component, p, w.rank) for a, _, (fitted, _) in plan for p, w in fitted.items()
                         if isinstance(w, LoraWeight) and w.rank > target_rank]
            if too_large:
                raise ValueError(f"{source}: {too_large[0][1]} of {too_large[0][0]} has rank {too_large[0][2]}, larger "
                                 f"than enable_lora_hotswap's target_rank={target_rank}")

        done = []
        try:
            for adapter, model, checked in plan:
                adapter.apply(model, 1.0, checked=checked, alone=True)
                done.append((adapter, model))
        except Exception:
            for adapter, model in done:
                adapter.remove(model)
            raise
        if target_rank is not None:
            for _, model in done:
                layers.pad_ranks(model, target_rank, [name])
        if self._lora_denoiser in parsed.components and self._lora_call_argument:
            _install_scale_hooks(models[self._lora_denoiser], self._lora_call_argument)
        logger.info("loaded LoRA %r (%s layout) from %s into %s", name, parsed.layout, source, sorted(parsed.components))

    def _hotswap(self, name: str, plan: list, source: str) -> None:
        """Write each component's new weights into adapter ``name`` in place, after checking every component."""
        holders = sorted(c for c, m in self._lora_models().items() if name in layers.adapter_names(m))
        given = sorted(adapter.component for adapter, _, _ in plan)
        problems = [] if given == holders else [
            f"it has LoRA weights for {given}, while adapter {name!r} is loaded in {holders}"]
        for adapter, model, (fitted, _) in plan:
            problems += [f"{adapter.component}: {p}" for p in layers.hotswap_problems(model, name, fitted)]
        if problems:
            raise ValueError(f"{source}: cannot hot-swap it into adapter {name!r}: " + "; ".join(problems[:4])
                             + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
                             + ". Hot-swapping replaces weights in place: the same layers, ranks no larger than "
                             "the loaded ones; otherwise delete_adapters(...) and load it as a new adapter")
        for adapter, model, (fitted, _) in plan:
            layers.hotswap(model, name, fitted)
        logger.info("hot-swapped LoRA %r from %s into %s", name, source, given)

    def enable_lora_hotswap(self, target_rank: int | None = None, check_compiled: str = "error") -> None:
        """Let later ``load_lora_weights(..., hotswap=True)`` calls bring LoRAs of ranks up to ``target_rank``: every
        LoRA loaded from now on is zero-padded to that rank (outputs unchanged).  Call it before loading the first
        LoRA and before compiling; with adapters already loaded, ``check_compiled`` says what happens:
        ``"error"`` (default) raises, ``"warn"`` / ``"ignore"`` pad those adapters now too (a compiled model then
        recompiles once).  Different alphas need nothing: a hot-swap folds ``alpha / rank`` into the weights."""
        if check_compiled not in ("error", "warn", "ignore"):
            raise ValueError(f"check_compiled must be 'error', 'warn' or 'ignore', got {check_compiled!r}")
        if target_rank is not None and (isinstance(target_rank, bool) or not isinstance(target_rank, int)
                                        or target_rank < 1):
            raise ValueError(f"target_rank must be a positive int or None, got {target_rank!r}")
        models = self._lora_models()
        if self._all_adapters():
            if check_compiled == "error":
                raise RuntimeError("call enable_lora_hotswap before loading the first LoRA adapter (or pass "
                                   "check_compiled='warn' / 'ignore' to pad the loaded ones now)")
            if check_compiled == "warn":
                logger.warning("enable_lora_hotswap after loading adapters: a compiled model recompiles once")
            if target_rank is not None:
                for model in models.values():
                    layers.pad_ranks(model, target_rank)
        self.__dict__["_lora_hotswap_rank"] = target_rank

    @staticmethod
    def _default_adapter_name(loaded: list[str]) -> str:
        i = len(loaded)
        while f"default_{i}" in loaded:
            i += 1
        return f"default_{i}"

    # ------------------------------------------------------------------ choosing adapters
    def get_list_adapters(self) -> dict[str, list[str]]:
        """``{component: [adapter names]}`` for every component holding a LoRA."""
        return {c: names for c, m in self._lora_models().items() if (names := layers.adapter_names(m))}

    def get_active_adapters(self) -> list[str]:
        """The active adapters (the denoiser's, else a text encoder's)."""
        for model in self._lora_models().values():
            active = layers.active_adapters(model)
            if active:
                return active
        return []

    def set_adapters(self, adapter_names: str | list[str], adapter_weights: Any = None) -> None:
        """Activate ``adapter_names`` with ``adapter_weights``: one number for all, one per adapter, and/or
        per component dicts (``{"unet": 0.5, "text_encoder": 1.0}``; a component left out gets 1).  A
        denoiser weight may itself be a dict of layer-name parts (``{"down_blocks.1": 0.3}``)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"adapter_names must be a str or a non-empty list of str, got {adapter_names!r}")
        weights = list(adapter_weights) if isinstance(adapter_weights, (list, tuple)) else [adapter_weights] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"adapter_weights has {len(weights)} entries for {len(names)} adapter_names; give one "
                             "weight per adapter, or a single weight for all")
        present = self._all_adapters()
        unknown = [n for n in names if n not in present]
        if unknown:
            raise ValueError(f"adapter_names {unknown} are not loaded; loaded adapters: {present}")
        models = self._lora_models()
        for w in weights:
            if isinstance(w, dict):
                extra = sorted(set(w) - set(models))
                if extra:
                    raise ValueError(f"adapter_weights names components {extra}; LoRA components of this pipeline: "
                                     f"{sorted(models)}")
                for component, value in w.items():
                    parts = value.values() if isinstance(value, dict) else [value]
                    if not all(v is None or isinstance(v, (int, float)) for v in parts):
                        raise TypeError(f"the weight for {component} must be a number, None or a dict of layer-name "
                                        f"parts to numbers, got {value!r}")
            elif w is not None and not isinstance(w, (int, float)):
                raise TypeError(f"an adapter weight must be a number, None or a dict of components, got {type(w).__name__}")
        for component, model in models.items():
            if not layers.has_adapters(model):
                continue
            per = []
            for w in weights:
                w = w.get(component, 1.0) if isinstance(w, dict) else w
                per.append(1.0 if w is None else w)
            layers.set_active(model, names, per)

    def disable_lora(self) -> None:
        """Run without the LoRA layers (they stay loaded)."""
        for model in self._lora_models().values():
            layers.set_enabled(model, False)

    def enable_lora(self) -> None:
        for model in self._lora_models().values():
            layers.set_enabled(model, True)

    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        """Remove adapters; layers left without any become the original modules again."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        present = self._all_adapters()
        unknown = [n for n in names if n not in present]
        if unknown:
            raise ValueError(f"adapter_names {unknown} are not loaded; loaded adapters: {present}")
        for component, model in self._lora_models().items():
            for name in names:
                layers.remove(model, name)
            if component == self._lora_denoiser and not layers.has_adapters(model):
                _remove_scale_hooks(model)

    def unload_lora_weights(self) -> None:
        """Remove every LoRA layer: the components hold their original modules again (fused LoRAs stay fused)."""
        for model in self._lora_models().values():
            layers.unwrap(model)
            _remove_scale_hooks(model)

    def set_lora_device(self, adapter_names: list[str], device: torch.device | str | int) -> None:
        """Move the named adapters' weights to ``device`` (e.g. park unused ones on the CPU)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for model in self._lora_models().values():
            for _, layer in layers.tuner_layers(model):
                for name in names:
                    for attr in layer.adapter_layer_names:
                        store = getattr(layer, attr)
                        if name not in store:
                            continue
                        if isinstance(store[name], torch.nn.Parameter):  # LoHa / LoKr factors
                            store[name].data = store[name].data.to(device)
                        else:
                            store[name].to(device)

    # ------------------------------------------------------------------ fusing
    def _fuse_targets(self, components: list[str] | None, default: tuple[str, ...] | None = None) -> dict[str, torch.nn.Module]:
        models = self._lora_models()
        if components is None:
            return models if default is None else {c: m for c, m in models.items() if c in default}
        if isinstance(components, str):
            components = [components]
        if not components:
            raise ValueError("components cannot be an empty list")
        unknown = [c for c in components if c not in self._lora_loadable_modules]
        if unknown:
            raise ValueError(f"components {unknown} are not LoRA components of this pipeline; accepted: "
                             f"{self._lora_loadable_modules}")
        return {c: models[c] for c in components if c in models}

    def fuse_lora(self, components: list[str] | None = None, lora_scale: float = 1.0, safe_fusing: bool = False,
                  adapter_names: list[str] | None = None, **kwargs: Any) -> None:
        """Merge the active (or named) adapters into the weights of ``components`` at ``lora_scale`` (default: all
        components; Flux: the transformer only, as in Diffusers).

        Faster inference; ``unfuse_lora`` takes them out again (to float rounding).  ``safe_fusing``
        refuses weights that would become NaN.
        """
        if adapter_names is not None:
            adapter_names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
            present = self._all_adapters()
            unknown = [n for n in adapter_names if n not in present]
            if unknown:
                raise ValueError(f"adapter_names {unknown} are not loaded; loaded adapters: {present}")
        for model in self._fuse_targets(components, self._lora_fuse_default).values():
            layers.merge(model, float(lora_scale), adapter_names, safe_fusing)

    def unfuse_lora(self, components: list[str] | None = None, **kwargs: Any) -> None:
        """Take fused adapters out of the weights of ``components`` (default: all) again."""
        for model in self._fuse_targets(components).values():
            layers.unmerge(model)

    # ------------------------------------------------------------------ saving
    @classmethod
    def save_lora_weights(cls, save_directory, unet_lora_layers=None, text_encoder_lora_layers=None,
                          text_encoder_2_lora_layers=None, is_main_process: bool = True, weight_name: str | None = None,
                          save_function=None, safe_serialization: bool = True, unet_lora_adapter_metadata=None,
                          text_encoder_lora_adapter_metadata=None, text_encoder_2_lora_adapter_metadata=None) -> None:
        """Write ``pytorch_lora_weights.safetensors`` (or ``weight_name``) with ``unet.`` / ``text_encoder.`` /
        ``text_encoder_2.`` keys, as Diffusers does; the layers are dicts of tensors (e.g. peft's
        ``get_peft_model_state_dict(pipe.unet, adapter_name=...)``) or modules."""
        write_lora(
            save_directory,
            {"unet": unet_lora_layers, "text_encoder": text_encoder_lora_layers,
             "text_encoder_2": text_encoder_2_lora_layers},
            {"unet": unet_lora_adapter_metadata, "text_encoder": text_encoder_lora_adapter_metadata,
             "text_encoder_2": text_encoder_2_lora_adapter_metadata},
            is_main_process=is_main_process, weight_name=weight_name, save_function=save_function,
            safe_serialization=safe_serialization,
        )


# Diffusers' class names for the same mixin.
StableDiffusionLoraLoaderMixin = LoraLoaderMixin
StableDiffusionXLLoraLoaderMixin = LoraLoaderMixin
