"""Diffusers' Flux IP-Adapter methods and call arguments for the Flux pipelines (``FluxIPAdapterMixin``).

    pipe.load_ip_adapter("XLabs-AI/flux-ip-adapter", weight_name="ip_adapter.safetensors",
                         image_encoder_pretrained_model_name_or_path="openai/clip-vit-large-patch14")
    pipe.set_ip_adapter_scale(0.8)                         # or one value per double-stream block
    image = pipe("a cat", ip_adapter_image=picture, negative_prompt="blurry", true_cfg_scale=4.0,
                 negative_ip_adapter_image=other).images[0]
    pipe.unload_ip_adapter()

How it composes with the engine: the image embeddings of the call (``ip_adapter_image`` /
``ip_adapter_image_embeds``, and the negative ones, a black image by default, as in Diffusers) are
encoded once per side and handed to every denoiser evaluation by a conditioning hook
(:func:`flux_ip_hook`), which stacks each side's rows in the order of the evaluation's guidance passes
(true CFG's separate negative pass gets the negative embeddings, a batched CFG the ``[negative;
positive]`` rows) and passes them to the transformer as ``ip_adapter_image_embeds=``, where the
adapter's forward pre-hook projects them (:mod:`kernel_ip_adapter.flux_adapter`).  The family's
``_evaluate`` needs to forward its keyword arguments to the transformer, as it does for ControlNet
residuals; nothing else in the family knows about IP-Adapters.
"""

from __future__ import annotations

import logging
import os
from numbers import Real
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from kernel import hub
from kernel.guidance import NEGATIVE, POSITIVE

from kernel_ip_adapter import flux_adapter
from kernel_ip_adapter.flux_adapter import EMBEDS, FluxIPAdapter, flux_ip_processors, flux_projection_layers
from kernel_ip_adapter.formats import load
from kernel_ip_adapter.mixin import _ADDED, _DEFAULT_CLIP_SIZE, _as_list, _dtype_kwarg

logger = logging.getLogger(__name__)

_ARGUMENTS = {POSITIVE: ("ip_adapter_image", "ip_adapter_image_embeds"),
              NEGATIVE: ("negative_ip_adapter_image", "negative_ip_adapter_image_embeds")}


def flux_ip_hook(pipe: Any, evaluation: Any) -> None:
    """Conditioning hook: the call's image embeddings for the evaluation's passes, as ``ip_adapter_image_embeds``."""
    call = getattr(pipe, "_call", None)
    sides = getattr(call, "flux_ip", None)
    if not sides:
        return
    per_pass = [pipe._flux_ip_side(call, p.conditioning) for p in evaluation.passes]
    evaluation.kwargs[EMBEDS] = [torch.cat(parts) if len(parts) > 1 else parts[0] for parts in zip(*per_pass)]


def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


class FluxIPAdapterMixin:
    """``load_ip_adapter``, ``set_ip_adapter_scale``, ``unload_ip_adapter``, ``encode_image``,
    ``prepare_ip_adapter_image_embeds`` and the ``(negative_)ip_adapter_image(_embeds)`` call arguments of
    Diffusers' Flux pipelines (see the module docstring)."""

    # ------------------------------------------------------------------ loading
    def load_ip_adapter(self, pretrained_model_name_or_path_or_dict: Any, weight_name: str | list[str] | None,
                        subfolder: str | list[str] | None = "",
                        image_encoder_pretrained_model_name_or_path: str | None = "image_encoder",
                        image_encoder_subfolder: str | None = "", image_encoder_dtype: torch.dtype | None = None,
                        **kwargs: Any) -> None:
        """Load one Flux IP-Adapter, or several (lists of sources / weight names / subfolders).

        ``pretrained_model_name_or_path_or_dict``: a Hub repo id, a folder, a file, or a state dict (XLabs' keys,
        or Diffusers' ``{"image_proj": ..., "ip_adapter": ...}``).  When the pipeline has no ``image_encoder``,
        ``CLIPVisionModelWithProjection`` is loaded from ``image_encoder_pretrained_model_name_or_path`` (a folder
        or Hub repo id, with ``image_encoder_subfolder``; ``None``: none, then only ``ip_adapter_image_embeds``
        work) in ``image_encoder_dtype`` (default: the transformer's dtype; Diffusers defaults to float16).
        ``cache_dir``, ``revision``, ``token``, ``local_files_only`` and ``HF_HUB_OFFLINE`` are honoured.  Loading
        replaces IP-Adapters loaded before; everything is checked before the pipeline changes.
        """
        kwargs.pop("low_cpu_mem_usage", None)
        hub_kwargs = hub.split_hub_kwargs(kwargs)
        if kwargs:
            raise TypeError(f"load_ip_adapter() got unexpected keyword arguments {sorted(kwargs)}")
        names, sources, subfolders = (_as_list(weight_name), _as_list(pretrained_model_name_or_path_or_dict),
                                      _as_list(subfolder))
        sources = sources * len(names) if len(sources) == 1 else sources
        subfolders = subfolders * len(names) if len(subfolders) == 1 else subfolders
        if not len(names) == len(sources) == len(subfolders):
            raise ValueError(f"load_ip_adapter got {len(sources)} sources, {len(subfolders)} subfolders and "
                             f"{len(names)} weight names; give one of each per IP-Adapter (or one to share)")
        transformer = getattr(self, "transformer", None)
        if transformer is None:
            raise ValueError(f"{type(self).__name__} has no transformer to load an IP-Adapter into")
        loaded = [load(src, sub or None, name, hub_kwargs) for src, sub, name in zip(sources, subfolders, names)]
        adapter = FluxIPAdapter([state for state, _ in loaded], [where for _, where in loaded])
        checked = adapter.check(transformer)

        components = self._component_names() if hasattr(self, "_component_names") else []
        new: dict[str, Any] = {}
        if "image_encoder" in components and getattr(self, "image_encoder", None) is None:
            if image_encoder_pretrained_model_name_or_path is None:
                logger.warning("no image encoder loaded (image_encoder_pretrained_model_name_or_path=None): pass "
                               "ip_adapter_image_embeds to the pipeline, not ip_adapter_image")
            else:
                dtype = image_encoder_dtype or next(transformer.parameters()).dtype
                new["image_encoder"] = self._load_flux_image_encoder(
                    image_encoder_pretrained_model_name_or_path, image_encoder_subfolder, dtype, hub_kwargs)
        if "feature_extractor" in components and getattr(self, "feature_extractor", None) is None:
            from transformers import CLIPImageProcessor

            encoder = new.get("image_encoder", getattr(self, "image_encoder", None))
            size = encoder.config.image_size if encoder is not None else _DEFAULT_CLIP_SIZE
            new["feature_extractor"] = CLIPImageProcessor(size=size, crop_size=size)

        adapter.apply(transformer, 1.0, checked=checked)
        if flux_ip_hook not in self.conditioning_hooks:
            self.conditioning_hooks.append(flux_ip_hook)
        if new:
            self.register_modules(**new)
        self.__dict__.setdefault(_ADDED, set()).update(new)

    def _load_flux_image_encoder(self, source: Any, subfolder: str | None, dtype: torch.dtype, hub_kwargs: dict):
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError("image_encoder_pretrained_model_name_or_path must be a folder or a Hub repo id, got "
                            f"{type(source).__name__}")
        local = hub.resolve_folder(source, subfolder=subfolder or None, allow_patterns=["config.json", "*.safetensors"],
                                   **hub_kwargs)
        if not any(local.glob("*.safetensors")):
            local = hub.resolve_folder(source, subfolder=subfolder or None, allow_patterns=["config.json", "*.bin"],
                                       **hub_kwargs)
        from transformers import CLIPVisionModelWithProjection

        logger.info("loading the IP-Adapter image encoder from %s", local)
        encoder = CLIPVisionModelWithProjection.from_pretrained(str(local), **_dtype_kwarg(dtype))
        return encoder.to(self.device).eval()

    # ------------------------------------------------------------------ scales and unloading
    def set_ip_adapter_scale(self, scale: Any) -> None:
        """A number for every block of every adapter; a list with one number per double-stream block (one adapter);
        or one entry (a number or such a list) per adapter, as Diffusers' Flux pipelines take it."""
        processors = flux_ip_processors(getattr(self, "transformer", None))
        if not processors:
            raise ValueError("no IP-Adapter is loaded; call load_ip_adapter(...) first")
        adapters, blocks = len(next(iter(processors.values())).to_k_ip), len(processors)
        if _is_number(scale):
            configs = [scale] * adapters
        elif isinstance(scale, (list, tuple)) and scale and all(_is_number(s) for s in scale) and adapters == 1:
            configs = [list(scale)]
        elif isinstance(scale, (list, tuple)) and all(
                _is_number(s) or (isinstance(s, (list, tuple)) and all(_is_number(x) for x in s)) for s in scale):
            configs = list(scale)
        else:
            raise TypeError(f"set_ip_adapter_scale takes a number, a list of numbers or a list of (numbers or lists of "
                            f"numbers), got {scale!r}")
        if len(configs) != adapters:
            raise ValueError(f"set_ip_adapter_scale got {len(configs)} scales for {adapters} IP-Adapter(s)")
        wrong = sorted({len(c) for c in configs if not _is_number(c)} - {blocks})
        if wrong:
            raise ValueError(f"a per-block scale list needs one value per double-stream block ({blocks}), got {wrong}")
        for i, processor in enumerate(processors.values()):
            processor.scale = [float(c) if _is_number(c) else float(c[i]) for c in configs]

    def unload_ip_adapter(self) -> None:
        """Take the IP-Adapters out: the transformer's own processors again, and the image encoder / feature
        extractor that ``load_ip_adapter`` added removed (ones the pipeline was given stay)."""
        transformer = getattr(self, "transformer", None)
        if transformer is not None:
            flux_adapter.remove(transformer)
        if flux_ip_hook in self.conditioning_hooks:
            self.conditioning_hooks.remove(flux_ip_hook)
        for name in sorted(self.__dict__.pop(_ADDED, set())):
            setattr(self, name, None)

    # ------------------------------------------------------------------ image embeddings
    def encode_image(self, image: Any, device: Any, num_images_per_prompt: int) -> torch.Tensor:
        """The projected, pooled CLIP embeddings of ``image`` (PIL images, arrays or ``pixel_values``), each repeated
        ``num_images_per_prompt`` times: ``(images * num_images_per_prompt, width)``."""
        encoder = getattr(self, "image_encoder", None)
        if encoder is None:
            raise ValueError("ip_adapter_image needs an image encoder: load_ip_adapter(..., "
                             "image_encoder_pretrained_model_name_or_path=...) or give the pipeline "
                             "image_encoder=CLIPVisionModelWithProjection...; or pass ip_adapter_image_embeds instead")
        if not isinstance(image, torch.Tensor):
            if getattr(self, "feature_extractor", None) is None:
                raise ValueError("ip_adapter_image as images needs a feature_extractor (CLIPImageProcessor); give one, "
                                 "or pass pixel values as a tensor")
            image = self.feature_extractor(image, return_tensors="pt").pixel_values
        image = image.to(device=device, dtype=next(encoder.parameters()).dtype)
        return encoder(image).image_embeds.repeat_interleave(num_images_per_prompt, 0)

    def prepare_ip_adapter_image_embeds(self, ip_adapter_image: Any, ip_adapter_image_embeds: Any, device: Any,
                                        num_images_per_prompt: int) -> list[torch.Tensor]:
        """One ``(rows * num_images_per_prompt, images, width)`` tensor per adapter, as Diffusers' Flux pipelines
        make them: from the images (one row), or the given embeddings repeated."""
        layers = flux_projection_layers(getattr(self, "transformer", None))
        if not layers:
            raise ValueError("no IP-Adapter is loaded; call load_ip_adapter(...) first")
        if ip_adapter_image_embeds is None:
            images = _as_list(ip_adapter_image)
            if len(images) != len(layers):
                raise ValueError(f"ip_adapter_image has {len(images)} entries for {len(layers)} IP-Adapter(s); give "
                                 "one image (or one list of images) per adapter")
            per_adapter = [self.encode_image(image, device, 1)[None] for image in images]
        else:
            per_adapter = _as_list(ip_adapter_image_embeds)
            if len(per_adapter) != len(layers):
                raise ValueError(f"ip_adapter_image_embeds has {len(per_adapter)} tensors for {len(layers)} "
                                 "IP-Adapter(s); give one per adapter")
        return [torch.cat([x] * num_images_per_prompt).to(device=device) for x in per_adapter]

    # ------------------------------------------------------------------ engine hooks
    def _check_call(self, call: SimpleNamespace) -> None:
        super()._check_call(call)
        given = {side: tuple(getattr(call, name, None) for name in names) for side, names in _ARGUMENTS.items()}
        layers = flux_projection_layers(getattr(self, "transformer", None))
        call.flux_ip = None
        if all(x is None for pair in given.values() for x in pair):
            if layers:
                missing = "" if hasattr(call, "ip_adapter_image") else \
                    f" ({type(self).__name__}.__call__ does not take them)"
                raise ValueError(f"an IP-Adapter is loaded: pass ip_adapter_image or ip_adapter_image_embeds{missing}, "
                                 "or call unload_ip_adapter() first")
            return
        if not layers:
            raise ValueError("ip_adapter_image / ip_adapter_image_embeds were given but no IP-Adapter is loaded; call "
                             "load_ip_adapter(...) first")
        extra = getattr(call, "joint_attention_kwargs", None) or {}
        if "ip_adapter_masks" in extra:
            raise ValueError("joint_attention_kwargs['ip_adapter_masks']: the Flux IP-Adapter has no region masks")
        for side, (image, embeds) in given.items():
            prefix = "negative_" if side == NEGATIVE else ""
            if image is not None and embeds is not None:
                raise ValueError(f"give {prefix}ip_adapter_image or {prefix}ip_adapter_image_embeds, not both")
            if image is not None:
                self._check_flux_images(image, f"{prefix}ip_adapter_image", len(layers))
            elif embeds is not None:
                self._check_flux_embeds(embeds, f"{prefix}ip_adapter_image_embeds", layers, call.batch)
        # The side left out is a black image, as in Diffusers (encoded only if a pass needs it).
        black = [np.zeros((call.height, call.width, 3), dtype=np.uint8)] * len(layers)
        call.flux_ip = {}
        for side, pair in given.items():
            missing = all(x is None for x in pair)
            call.flux_ip[side] = {"inputs": (black, None) if missing else pair, "default": missing}

    def _check_flux_images(self, image: Any, name: str, n: int) -> None:
        images = _as_list(image)
        if len(images) != n:
            raise ValueError(f"{name} has {len(images)} entries for {n} IP-Adapter(s); give one image (or one list of "
                             "images) per adapter")
        if getattr(self, "image_encoder", None) is None:
            raise ValueError(f"{name} needs an image encoder, and this pipeline has none: load_ip_adapter(..., "
                             "image_encoder_pretrained_model_name_or_path=...) or give the pipeline "
                             "image_encoder=CLIPVisionModelWithProjection...; or pass the embeddings instead")

    @staticmethod
    def _check_flux_embeds(embeds: Any, name: str, layers: list, batch: int) -> None:
        if not isinstance(embeds, (list, tuple)) or not all(isinstance(x, torch.Tensor) for x in embeds):
            raise ValueError(f"{name} must be a list with one tensor per IP-Adapter, got {type(embeds).__name__}")
        if len(embeds) != len(layers):
            raise ValueError(f"{name} has {len(embeds)} tensors for {len(layers)} IP-Adapter(s); give one per adapter")
        for i, (x, layer) in enumerate(zip(embeds, layers)):
            width = layer.image_embeds.in_features
            if x.ndim != 3 or x.shape[-1] != width:
                raise ValueError(f"{name}[{i}] has shape {tuple(x.shape)}; IP-Adapter {i} takes pooled image "
                                 f"embeddings shaped (rows, images, {width})")
            if x.shape[0] not in (1, batch):
                raise ValueError(f"{name}[{i}] has {x.shape[0]} rows for {batch} images (prompts x "
                                 "num_images_per_prompt); give 1 row or one per image")

    def _flux_ip_side(self, call: SimpleNamespace, side: str) -> list[torch.Tensor]:
        """One side's embeddings, one row per image (encoded on first use in the call)."""
        entry = call.flux_ip[side]
        if "embeds" not in entry:
            image, embeds = entry["inputs"]
            if entry["default"] and getattr(self, "image_encoder", None) is None:
                prefix = "negative_" if side == NEGATIVE else ""
                raise ValueError(f"the {side} guidance pass needs {prefix}ip_adapter_image_embeds: without them "
                                 "the IP-Adapter takes a black image, and this pipeline has no image encoder")
            per_adapter = self.prepare_ip_adapter_image_embeds(image, embeds, call.device, 1)
            entry["embeds"] = [x if x.shape[0] == call.batch else x.repeat(call.batch, 1, 1) for x in per_adapter]
        return entry["embeds"]


__all__ = ["FluxIPAdapterMixin", "flux_ip_hook"]
