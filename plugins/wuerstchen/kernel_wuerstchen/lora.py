"""LoRA on the Würstchen prior pipeline, as Diffusers 0.42.1 gives it (``WuerstchenPriorPipeline`` mixes in
``StableDiffusionLoraLoaderMixin`` with ``unet_name = "prior"``): LoRA files address the stage C model as
``prior.`` and the CLIP text encoder as ``text_encoder.``.

    pipe.prior_pipe.load_lora_weights("./lora", adapter_name="style")   # prior. / text_encoder. keys
    pipe.prior_pipe.set_adapters("style", adapter_weights=0.7)
    WuerstchenPriorPipeline.save_lora_weights("./out", unet_lora_layers=..., text_encoder_lora_layers=...)

Everything is kernel-lora's :class:`kernel_lora.LoraLoaderMixin` (peft layers, set_adapters, fuse_lora, ...); this
module only maps the ``prior.`` prefix, which kernel-lora's file reader does not know, onto the mixin's denoiser
component (keys without a prefix), keeping the per-component alphas of Diffusers' LoRA metadata.  Diffusers'
prior call has no ``cross_attention_kwargs``, so there is no per-call LoRA scale (``set_adapters`` weighs it).
"""

from __future__ import annotations

from typing import Any

import torch

from kernel_lora import LoraLoaderMixin
from kernel_lora.formats import apply_metadata, parse
from kernel_lora.saving import write_lora
from kernel_lora.source import fetch

_FETCH_KEYS = ("subfolder", "use_safetensors", "cache_dir", "revision", "token", "local_files_only", "force_download",
               "proxies")


def prior_lora_state(state: dict[str, Any], metadata: dict[str, Any] | None, source: str) -> dict[str, Any]:
    """``state`` with ``prior.`` keys unprefixed (the mixin's denoiser) and, where Diffusers' metadata sets
    ``lora_alpha`` / ``alpha_pattern`` / ``use_rslora`` for a component, each layer's alpha written as a
    ``<layer>.alpha`` entry (a state dict carries no metadata)."""
    renamed = {(k[len("prior."):] if k.startswith("prior.") else k): v for k, v in state.items()}
    if not metadata:
        return renamed
    per_component: dict[str, dict[str, Any]] = {}
    for key, value in metadata.items():
        component, _, rest = key.partition(".")
        if rest:
            per_component.setdefault(component, {})[rest] = value
    parsed = parse(renamed, source, default_component="prior")
    for component, weights in parsed.components.items():
        apply_metadata(weights, per_component.get(component), source, component)
        prefix = "" if component == "prior" else f"{component}."
        for name, layer in weights.layers.items():
            key = f"{prefix}{name}.alpha"
            if layer.alpha is not None and key not in renamed:
                renamed[key] = torch.tensor(float(layer.alpha))
    return renamed


class WuerstchenPriorLoraLoaderMixin(LoraLoaderMixin):
    """Diffusers' LoRA methods on the prior pipeline: components ``prior`` and ``text_encoder``."""

    unet_name = "prior"
    text_encoder_name = "text_encoder"
    _lora_components = ("prior", "text_encoder")
    _lora_call_argument = None

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, weight_name: str | None = None,
                          adapter_name: str | None = None, hotswap: bool = False, **kwargs: Any) -> None:
        """Load a LoRA (``prior.`` / ``text_encoder.`` keys; a dict, a file, a folder or a Hub repo id) into the
        prior and the text encoder as adapter ``adapter_name``; the arguments are kernel-lora's
        :meth:`kernel_lora.LoraLoaderMixin.load_lora_weights`."""
        fetch_kwargs = {k: kwargs.pop(k) for k in _FETCH_KEYS if k in kwargs}
        state, metadata, source = fetch(pretrained_model_name_or_path_or_dict, weight_name, **fetch_kwargs)
        state = prior_lora_state(state, metadata, source)
        super().load_lora_weights(state, adapter_name=adapter_name, hotswap=hotswap, **kwargs)

    @classmethod
    def save_lora_weights(cls, save_directory, unet_lora_layers=None, text_encoder_lora_layers=None,
                          is_main_process: bool = True, weight_name: str | None = None, save_function=None,
                          safe_serialization: bool = True, unet_lora_adapter_metadata=None,
                          text_encoder_lora_adapter_metadata=None) -> None:
        """Write ``pytorch_lora_weights.safetensors`` (or ``weight_name``) with ``prior.`` keys for
        ``unet_lora_layers`` (the prior's; Diffusers' argument name) and ``text_encoder.`` keys, as Diffusers does."""
        if not unet_lora_layers and not text_encoder_lora_layers:
            raise ValueError("save_lora_weights needs at least one of unet_lora_layers (the prior's LoRA layers) or "
                             "text_encoder_lora_layers")
        write_lora(save_directory, {"prior": unet_lora_layers, "text_encoder": text_encoder_lora_layers},
                   {"prior": unet_lora_adapter_metadata, "text_encoder": text_encoder_lora_adapter_metadata},
                   is_main_process=is_main_process, weight_name=weight_name, save_function=save_function,
                   safe_serialization=safe_serialization)
