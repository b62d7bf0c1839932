"""The LoRA mixin set up for the transformer pipelines: SD3 / SD3.5, Flux and PixArt.

    pipe.load_lora_weights("./lora", adapter_name="style")          # transformer. / text_encoder. keys
    pipe.load_lora_weights("flux_kohya.safetensors")                # kohya-ss and XLabs Flux files too
    image = pipe(prompt, joint_attention_kwargs={"scale": 0.8}).images[0]
    pipe.encode_prompt(prompt, lora_scale=0.8)                      # the text encoders' LoRA at 0.8

What differs from the SD mixin is data: the components (Diffusers' ``_lora_loadable_modules``:
SD3 ``transformer``, ``text_encoder``, ``text_encoder_2``; Flux ``transformer``, ``text_encoder``;
PixArt ``transformer``, which Diffusers gives no LoRA methods), the call argument whose ``"scale"``
weighs the LoRA (``joint_attention_kwargs``), Flux fusing only the transformer by default, and
``save_lora_weights``' arguments.

The per-call text-encoder scale: Diffusers' SD3 and Flux ``encode_prompt(lora_scale=s)`` multiply
the text encoders' LoRA by ``s``, and ``__call__`` passes ``joint_attention_kwargs["scale"]`` as
``lora_scale``.  The families' own ``encode_prompt`` takes the argument without acting on it, so
this mixin wraps the ``encode_prompt`` a pipeline class defines (at class creation, in
``__init_subclass__``) to run under :func:`kernel_layers.adapters.adapter_scale`, and records the
running call's scale in ``_generate``.  The transformer's scale is the denoiser hook of
:mod:`kernel_lora.mixin`, reading ``joint_attention_kwargs`` on every forward call.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from kernel_layers.adapters import adapter_scale
from kernel_lora.mixin import LoraLoaderMixin
from kernel_lora.saving import write_lora
from kernel_lora.source import fetch

_SCALED = "_kernel_lora_scales_text_encoders"


def _scaled_encode_prompt(fn: Callable) -> Callable:
    """``fn`` (a pipeline's ``encode_prompt``) with the text encoders' LoRA scaled by its ``lora_scale``
    (else by the running call's scale) while it runs."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def encode_prompt(self, *args, **kwargs):
        state = self.__dict__
        if state.get("_lora_encoding"):  # nested: the outer call scales
            return fn(self, *args, **kwargs)
        try:
            scale = signature.bind(self, *args, **kwargs).arguments.get("lora_scale")
        except TypeError:
            return fn(self, *args, **kwargs)  # let the function report its own argument error
        if scale is None:
            scale = state.get("_lora_call_scale")
        encoders = [m for c, m in self._lora_models().items() if c != self._lora_denoiser]
        state["_lora_encoding"] = True
        try:
            with adapter_scale(encoders, scale):
                return fn(self, *args, **kwargs)
        finally:
            state["_lora_encoding"] = False

    setattr(encode_prompt, _SCALED, True)
    return encode_prompt


class TransformerLoraLoaderMixin(LoraLoaderMixin):
    """The LoRA methods for pipelines whose denoiser is ``transformer`` (``joint_attention_kwargs`` scale)."""

    transformer_name = "transformer"
    _lora_components = ("transformer", "text_encoder", "text_encoder_2")
    _lora_call_argument = "joint_attention_kwargs"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("encode_prompt")
        if callable(fn) and not getattr(fn, _SCALED, False):
            cls.encode_prompt = _scaled_encode_prompt(fn)

    def _generate(self, arguments: dict[str, Any]):
        """Record the call's LoRA scale for the prompt encoding inside it (Diffusers passes it as ``lora_scale``)."""
        extra = arguments.get(self._lora_call_argument) if self._lora_call_argument else None
        previous = self.__dict__.get("_lora_call_scale")
        self.__dict__["_lora_call_scale"] = extra.get("scale") if isinstance(extra, dict) else None
        try:
            return super()._generate(arguments)
        finally:
            self.__dict__["_lora_call_scale"] = previous

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, return_alphas: bool = False, **kwargs: Any):
        """The tensors as stored, from a dict, file, folder or Hub repo, as Diffusers' SD3 / Flux mixins return them:
        the state dict, then ``None`` for network alphas with ``return_alphas=True`` (alphas stay in the state dict;
        kohya and XLabs names are resolved against the model at load time), then the LoRA metadata with
        ``return_lora_metadata=True``."""
        weight_name = kwargs.pop("weight_name", None)
        with_metadata = kwargs.pop("return_lora_metadata", False)
        state, metadata, _ = fetch(pretrained_model_name_or_path_or_dict, weight_name, **kwargs)
        out: tuple = (state,) + ((None,) if return_alphas else ()) + ((metadata,) if with_metadata else ())
        return out if len(out) > 1 else state


class SD3LoraLoaderMixin(TransformerLoraLoaderMixin):
    """SD3 / SD3.5: LoRA in the MMDiT and both CLIP text encoders (Diffusers takes none into T5)."""

    @classmethod
    def save_lora_weights(cls, save_directory, transformer_lora_layers=None, text_encoder_lora_layers=None,
                          text_encoder_2_lora_layers=None, is_main_process: bool = True, weight_name: str | None = None,
                          save_function=None, safe_serialization: bool = True, transformer_lora_adapter_metadata=None,
                          text_encoder_lora_adapter_metadata=None, text_encoder_2_lora_adapter_metadata=None) -> None:
        """Write ``pytorch_lora_weights.safetensors`` (or ``weight_name``) with ``transformer.`` / ``text_encoder.`` /
        ``text_encoder_2.`` keys, as Diffusers does."""
        write_lora(save_directory,
                   {"transformer": transformer_lora_layers, "text_encoder": text_encoder_lora_layers,
                    "text_encoder_2": text_encoder_2_lora_layers},
                   {"transformer": transformer_lora_adapter_metadata, "text_encoder": text_encoder_lora_adapter_metadata,
                    "text_encoder_2": text_encoder_2_lora_adapter_metadata},
                   is_main_process=is_main_process, weight_name=weight_name, save_function=save_function,
                   safe_serialization=safe_serialization)


class FluxLoraLoaderMixin(TransformerLoraLoaderMixin):
    """Flux.1: LoRA in the transformer and the CLIP text encoder; kohya-ss and XLabs files in the original
    model's names load too.  ``fuse_lora()`` fuses the transformer only unless ``components`` says more."""

    _lora_components = ("transformer", "text_encoder")
    _lora_fuse_default = ("transformer",)

    def unload_lora_weights(self, reset_to_overwritten_params: bool = False) -> None:
        """Remove every LoRA layer.  ``reset_to_overwritten_params`` is accepted for Diffusers' signature: no LoRA
        loaded here widens a layer (Flux Control LoRAs are refused), so there is nothing to reset."""
        super().unload_lora_weights()

    @classmethod
    def save_lora_weights(cls, save_directory, transformer_lora_layers=None, text_encoder_lora_layers=None,
                          is_main_process: bool = True, weight_name: str | None = None, save_function=None,
                          safe_serialization: bool = True, transformer_lora_adapter_metadata=None,
                          text_encoder_lora_adapter_metadata=None) -> None:
        """Write ``pytorch_lora_weights.safetensors`` (or ``weight_name``) with ``transformer.`` / ``text_encoder.``
        keys, as Diffusers does."""
        write_lora(save_directory, {"transformer": transformer_lora_layers, "text_encoder": text_encoder_lora_layers},
                   {"transformer": transformer_lora_adapter_metadata, "text_encoder": text_encoder_lora_adapter_metadata},
                   is_main_process=is_main_process, weight_name=weight_name, save_function=save_function,
                   safe_serialization=safe_serialization)


class PixArtLoraLoaderMixin(TransformerLoraLoaderMixin):
    """PixArt-alpha / Sigma: LoRA in the transformer (Diffusers' layout, ``transformer.`` keys).  Diffusers has no
    LoRA methods for PixArt and its pipeline call no scale argument, so there is no per-call scale here either."""

    _lora_components = ("transformer",)
    _lora_call_argument = None

    @classmethod
    def save_lora_weights(cls, save_directory, transformer_lora_layers=None, is_main_process: bool = True,
                          weight_name: str | None = None, save_function=None, safe_serialization: bool = True,
                          transformer_lora_adapter_metadata=None) -> None:
        """Write ``pytorch_lora_weights.safetensors`` (or ``weight_name``) with ``transformer.`` keys."""
        write_lora(save_directory, {"transformer": transformer_lora_layers},
                   {"transformer": transformer_lora_adapter_metadata}, is_main_process=is_main_process,
                   weight_name=weight_name, save_function=save_function, safe_serialization=safe_serialization)
