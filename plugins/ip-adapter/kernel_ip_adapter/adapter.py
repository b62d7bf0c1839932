"""IP-Adapters for one UNet, as a :class:`kernel.protocols.Adapter`: ``apply(unet, scale)`` / ``remove(unet)``.

    adapter = IPAdapter([load_file("ip-adapter_sd15.safetensors")])
    adapter.apply(pipe.unet, 0.6)   # image projections + decoupled cross-attention in every cross-attention layer
    adapter.remove(pipe.unet)       # the UNet's own processors, projection and config again, exactly

``apply`` installs, on a UNet with Diffusers' module names (``UNet2DConditionModel``):

* the image projections as ``unet.encoder_hid_proj`` (a
  :class:`kernel_ip_adapter.projection.MultiIPAdapterImageProjection`) and
  ``unet.config.encoder_hid_dim_type = "ip_image_proj"``, so the UNet turns
  ``added_cond_kwargs["image_embeds"]`` (one tensor per adapter) into image tokens and passes
  ``encoder_hidden_states=(text, [image tokens ...])`` to its attention layers, as Diffusers' UNet does
  (a ``"text_proj"`` projection already there moves to ``text_encoder_hid_proj``);
* an :class:`kernel_ip_adapter.processor.IPAdapterAttnProcessor` on every cross-attention layer, holding
  each adapter's ``to_k_ip`` / ``to_v_ip`` for that layer and the layer's scale.

The files number the attention layers of an SD UNet (self- and cross-attention alternately); in a UNet
with AnimateDiff motion modules (``UNetMotionModel``) the motion modules' attention layers are left out of
that numbering, as Diffusers does (that UNet repeats each video's image tokens for its frames itself).

A FaceID file's LoRA is not applied here (as Diffusers' UNet loader does not): :meth:`IPAdapter.lora_state_dicts`
gives it, in Diffusers' attention-processor LoRA layout, to the pipeline, which loads it as a LoRA adapter.

Several adapters are applied together (one ``IPAdapter`` of several state dicts); applying replaces IP
adapters already installed.  :meth:`check` validates everything first, so a file made for another
UNet (an SDXL adapter on SD 1.5) leaves the model as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from kernel_ip_adapter.formats import IPAdapterFormatError, IPAdapterWeights, convert
from kernel_ip_adapter.processor import IPAdapterAttnProcessor
from kernel_ip_adapter.projection import MultiIPAdapterImageProjection

IP_IMAGE_PROJ = "ip_image_proj"
_SAVED = "_kernel_ip_adapter_saved"


@dataclass
class _Saved:
    """What :meth:`IPAdapter.apply` replaced in a UNet, to put back on removal."""

    processors: dict[str, Any]          # attention module name -> its processor before
    encoder_hid_proj: nn.Module | None
    moved_text_proj: bool               # a "text_proj" projection went to text_encoder_hid_proj
    hid_dim_type: Any
    defaults_used: tuple


def is_motion_layer(name: str) -> bool:
    """An attention layer of an AnimateDiff motion module (not numbered by IP-Adapter files)."""
    return "motion_modules" in name


#: Diffusers' UNets hold their blocks in this order (the order IP-Adapter files number their layers in), whatever
#: order a UNet here registers them in (UNetMotionModel registers its mid block before the up blocks)
_BLOCK_ORDER = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}


def attention_layers(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """The UNet's attention modules, down blocks, up blocks, then the mid block (module order within each), as
    Diffusers lists them; without those inside ``encoder_hid_proj``."""
    layers = [(name, m) for name, m in unet.named_modules()
              if hasattr(m, "set_processor") and hasattr(m, "get_processor") and not name.startswith("encoder_hid_proj.")]
    return sorted(layers, key=lambda item: _BLOCK_ORDER.get(item[0].split(".", 1)[0], len(_BLOCK_ORDER)))


def ip_processors(unet: nn.Module) -> dict[str, IPAdapterAttnProcessor]:
    """``{attention module name: IP processor}`` of the IP-Adapter layers installed in ``unet``."""
    return {name: m.processor for name, m in attention_layers(unet) if isinstance(m.processor, IPAdapterAttnProcessor)}


def installed(unet: nn.Module) -> bool:
    return getattr(unet, _SAVED, None) is not None


def projection_layers(unet: nn.Module) -> list[nn.Module]:
    """The image projection of each installed IP-Adapter (empty when none is installed)."""
    proj = getattr(unet, "encoder_hid_proj", None)
    return list(proj.image_projection_layers) if installed(unet) and isinstance(proj, MultiIPAdapterImageProjection) else []


def _set_config(unet: nn.Module, value: Any, defaults_used: tuple | None = None) -> None:
    unet.register_to_config(encoder_hid_dim_type=value)
    if defaults_used is not None:  # back to exactly the config it had
        object.__setattr__(unet.config, "defaults_used", defaults_used)


def remove(unet: nn.Module) -> None:
    """Take every IP-Adapter out of ``unet``: its processors, projection and config as before."""
    saved: _Saved | None = getattr(unet, _SAVED, None)
    if saved is None:
        return
    layers = dict(attention_layers(unet))
    for name, processor in saved.processors.items():
        layers[name].set_processor(processor)
    if saved.moved_text_proj:
        unet.encoder_hid_proj = unet.text_encoder_hid_proj
        del unet.text_encoder_hid_proj
    else:
        unet.encoder_hid_proj = saved.encoder_hid_proj
    _set_config(unet, saved.hid_dim_type, saved.defaults_used)
    del unet.__dict__[_SAVED]


class IPAdapter:
    """One or several IP-Adapters (state dicts in the original layout, or converted weights) for a UNet."""

    component_kind = "adapter"

    def __init__(self, state_dicts: Mapping | Sequence[Mapping | IPAdapterWeights], sources: Sequence[str] | None = None):
        items = [state_dicts] if isinstance(state_dicts, (Mapping, IPAdapterWeights)) else list(state_dicts)
        if not items:
            raise ValueError("IPAdapter needs at least one IP-Adapter state dict")
        sources = list(sources) if sources is not None else [f"IP-Adapter {i}" for i in range(len(items))]
        self.adapters = [x if isinstance(x, IPAdapterWeights) else convert(x, src) for x, src in zip(items, sources)]

    @property
    def num_adapters(self) -> int:
        return len(self.adapters)

    # ---------------------------------------------------------------- checks
    def check(self, unet: nn.Module) -> list[tuple[str, nn.Module, int]]:
        """``[(name, cross-attention module, layer number)]`` the adapters fill; ``ValueError`` when they do not fit."""
        if not hasattr(unet, "encoder_hid_proj") or not hasattr(unet, "down_blocks"):
            raise ValueError(f"IP-Adapter needs a UNet2DConditionModel, got {type(unet).__name__}")
        kind = unet.config.get("encoder_hid_dim_type")
        if not installed(unet) and kind not in (None, "text_proj"):
            raise ValueError(f"this UNet already projects its encoder states with encoder_hid_dim_type={kind!r}; "
                             "IP-Adapter cannot be added to it")
        numbered = [(name, m) for name, m in attention_layers(unet) if not is_motion_layer(name)]
        layers = [(name, m, n) for n, (name, m) in enumerate(numbered) if getattr(m, "is_cross_attention", False)]
        if not layers:
            raise ValueError(f"this {type(unet).__name__} has no cross-attention layers for IP-Adapter")
        wanted = {n for _, _, n in layers}
        for adapter in self.adapters:
            have = set(adapter.layers)
            if have != wanted:
                raise ValueError(
                    f"{adapter.source}: has image key/value weights for {len(have)} attention layers "
                    f"({_span(have)}) but this UNet has {len(wanted)} cross-attention layers ({_span(wanted)}); "
                    "is it an IP-Adapter for another model (SD 1.5 / SDXL)?")
            for name, m, n in layers:
                k = adapter.layers[n][0]
                need = (m.inner_kv_dim, m.cross_attention_dim)
                if tuple(k.shape) != need:
                    raise ValueError(f"{adapter.source}: ip_adapter.{n}.to_k_ip.weight has shape {tuple(k.shape)} but "
                                     f"{name} needs {need}; is it an IP-Adapter for another model (SD 1.5 / SDXL)?")
            if adapter.lora:
                self._check_lora(adapter, attention_layers(unet))
        return layers

    @staticmethod
    def _check_lora(adapter: IPAdapterWeights, attention: list[tuple[str, nn.Module]]) -> None:
        """A FaceID LoRA must address this UNet's attention layers with their projections' shapes."""
        for n, parts in sorted(adapter.lora.items()):
            if n >= len(attention):
                raise ValueError(f"{adapter.source}: has FaceID LoRA weights for attention layer {n} but this UNet has "
                                 f"{len(attention)} attention layers; is it an IP-Adapter for another model?")
            name, module = attention[n]
            for proj, linear in (("to_q", module.to_q), ("to_k", module.to_k), ("to_v", module.to_v),
                                 ("to_out", module.to_out[0])):
                down, up = parts[f"{proj}_lora.down.weight"], parts[f"{proj}_lora.up.weight"]
                if down.shape[1] != linear.in_features or up.shape[0] != linear.out_features:
                    raise ValueError(f"{adapter.source}: ip_adapter.{n}.{proj}_lora maps {down.shape[1]} -> "
                                     f"{up.shape[0]} features but {name}.{proj} maps {linear.in_features} -> "
                                     f"{linear.out_features}; is it an IP-Adapter for another model (SD 1.5 / SDXL)?")

    def lora_state_dicts(self, unet: nn.Module) -> dict[int, dict[str, torch.Tensor]]:
        """``{adapter index: LoRA state dict}`` for the FaceID adapters, in the attention-processor LoRA layout
        Diffusers builds from them (``unet.<attention>.processor.to_q_lora.down.weight`` ...)."""
        names = [name for name, _ in attention_layers(unet)]
        out: dict[int, dict[str, torch.Tensor]] = {}
        for i, adapter in enumerate(self.adapters):
            for n, parts in sorted(adapter.lora.items()):
                out.setdefault(i, {}).update({f"unet.{names[n]}.processor.{part}": value
                                              for part, value in parts.items()})
        return out

    # ---------------------------------------------------------------- the Adapter protocol
    def apply(self, model: nn.Module, scale: float = 1.0, *, checked: list | None = None) -> None:
        """Install the adapters in ``model`` (replacing IP-Adapters already there) with ``scale`` everywhere."""
        layers = checked if checked is not None else self.check(model)
        remove(model)
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        projections = [a.build_projection().to(device=device, dtype=dtype) for a in self.adapters]
        saved = _Saved(processors={}, encoder_hid_proj=model.encoder_hid_proj, moved_text_proj=False,
                       hid_dim_type=model.config.get("encoder_hid_dim_type"),
                       defaults_used=tuple(getattr(model.config, "defaults_used", ()) or ()))
        for name, module, n in layers:
            before = module.processor
            with torch.device("meta"):
                processor = IPAdapterAttnProcessor(module.inner_kv_dim, module.cross_attention_dim,
                                                   [a.num_tokens for a in self.adapters], float(scale),
                                                   backend=getattr(before, "backend", None),
                                                   slice_size=getattr(before, "slice_size", None))
            state = {}
            for i, adapter in enumerate(self.adapters):
                state[f"to_k_ip.{i}.weight"], state[f"to_v_ip.{i}.weight"] = adapter.layers[n]
            processor.load_state_dict(state, strict=True, assign=True)
            saved.processors[name] = before
            module.set_processor(processor.to(device=device, dtype=dtype))
        if saved.hid_dim_type == "text_proj" and model.encoder_hid_proj is not None:
            model.text_encoder_hid_proj = model.encoder_hid_proj  # Kolors: the text projection keeps working
            saved.moved_text_proj = True
        model.encoder_hid_proj = MultiIPAdapterImageProjection(projections)
        _set_config(model, IP_IMAGE_PROJ)
        object.__setattr__(model, _SAVED, saved)

    def remove(self, model: nn.Module) -> None:
        """Every IP-Adapter out of ``model``: its own processors, projection and config again."""
        remove(model)


def _span(numbers: set[int]) -> str:
    s = sorted(numbers)
    return "none" if not s else (", ".join(map(str, s)) if len(s) <= 6 else f"{s[0]}, {s[1]}, ..., {s[-1]}")


__all__ = ["IPAdapter", "IPAdapterFormatError", "attention_layers", "installed", "ip_processors", "is_motion_layer",
           "projection_layers", "remove"]
