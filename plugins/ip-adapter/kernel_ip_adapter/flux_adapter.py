"""IP-Adapter for the Flux transformer (the XLabs-AI Flux IP-Adapter and Diffusers' ``FluxIPAdapterMixin`` layout),
as a :class:`kernel.protocols.Adapter`: ``apply(transformer, scale)`` / ``remove(transformer)``.

    adapter = FluxIPAdapter(load_file("ip_adapter.safetensors"))
    adapter.apply(pipe.transformer)      # image projection + image attention in every double-stream block
    adapter.remove(pipe.transformer)     # the transformer's own processors again, exactly

Files.  XLabs' trainer writes ``ip_adapter_proj_model.{proj,norm}.*`` (a plain IP-Adapter image projection,
:class:`ImageProjection`: the pooled CLIP image embedding -> a few tokens) and, per double-stream block ``i``,
``double_blocks.<i>.processor.ip_adapter_double_stream_{k,v}_proj.{weight,bias}``: image key/value projections
*with biases*.  Diffusers' layout for the same is ``image_proj.*`` and ``ip_adapter.<i>.to_{k,v}_ip.{weight,bias}``
(flat in a file, or the nested ``{"image_proj": ..., "ip_adapter": ...}`` dict); both are read.

The change.  Each double-stream block's attention gets a :class:`FluxIPAdapterAttnProcessor` wrapping the
processor it had: the joint text-image attention runs as before, and the image stream's (normed, un-rotated)
queries also attend to each adapter's image tokens; that output, times the adapter's scale, is added to the
block's image stream after its feed-forward (the block adds a processor's third output).  The single-stream
blocks are left alone, as in the XLabs model and Diffusers.  The projections become
``transformer.encoder_hid_proj`` (a :class:`MultiIPAdapterImageProjection`, Diffusers' attribute), and a forward
pre-hook turns ``joint_attention_kwargs["ip_adapter_image_embeds"]`` (one ``(batch, images, width)`` tensor per
adapter, Diffusers' argument) - or the keyword ``ip_adapter_image_embeds=`` the pipeline passes - into the
processors' ``ip_hidden_states``.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from kernel_ip_adapter.formats import IPAdapterFormatError, IPAdapterWeights, _plain
from kernel_ip_adapter.projection import MultiIPAdapterImageProjection

#: The keyword (and ``joint_attention_kwargs`` entry) that carries the image embeddings into the transformer.
EMBEDS = "ip_adapter_image_embeds"
_SAVED = "_kernel_flux_ip_adapter_saved"
_XLABS_PROJ = "ip_adapter_proj_model."
_XLABS_LAYER = re.compile(r"^double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_(k|v)_proj\.(weight|bias)$")
_LAYER = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.(weight|bias)$")
_PARTS = ("to_k_ip.weight", "to_v_ip.weight", "to_k_ip.bias", "to_v_ip.bias")


# ---------------------------------------------------------------------------- files
def _split(state: Mapping[str, Any], source: str) -> tuple[dict, dict]:
    """``(image_proj, ip_adapter)`` groups in Diffusers' names, from any of the three layouts."""
    if isinstance(state.get("image_proj"), Mapping) or isinstance(state.get("ip_adapter"), Mapping):
        other = [k for k in state if k not in ("image_proj", "ip_adapter")]
        if other:
            raise IPAdapterFormatError(f"{source}: unexpected entries besides image_proj and ip_adapter: {sorted(other)[:4]}")
        return dict(state.get("image_proj") or {}), dict(state.get("ip_adapter") or {})
    image_proj, layers, other = {}, {}, []
    for key, value in state.items():
        xlabs = _XLABS_LAYER.match(key)
        if xlabs is not None:
            i, kv, kind = xlabs.groups()
            layers[f"{i}.to_{kv}_ip.{kind}"] = value
        elif key.startswith(_XLABS_PROJ):
            image_proj[key[len(_XLABS_PROJ):]] = value
        elif key.startswith("image_proj."):
            image_proj[key[len("image_proj."):]] = value
        elif key.startswith("ip_adapter."):
            layers[key[len("ip_adapter."):]] = value
        else:
            other.append(key)
    if other:
        raise IPAdapterFormatError(
            f"{source}: keys of no Flux IP-Adapter layout: {sorted(other)[:4]} (expected XLabs' "
            "'ip_adapter_proj_model.*' and 'double_blocks.<i>.processor.ip_adapter_double_stream_k_proj.*', or "
            "'image_proj.*' and 'ip_adapter.<i>.to_k_ip.*')")
    return image_proj, layers


def _flux_layers(group: dict, source: str) -> dict[int, tuple[torch.Tensor, ...]]:
    found: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in group.items():
        m = _LAYER.match(key)
        if m is None:
            raise IPAdapterFormatError(f"{source}: unexpected key ip_adapter.{key} (expected "
                                       "ip_adapter.<i>.to_k_ip.weight / .bias and to_v_ip.weight / .bias)")
        if not isinstance(value, torch.Tensor):
            raise IPAdapterFormatError(f"{source}: ip_adapter.{key} is not a tensor")
        found.setdefault(int(m.group(1)), {})[f"{m.group(2)}.{m.group(3)}"] = value
    out = {}
    for i, parts in sorted(found.items()):
        missing = [p for p in _PARTS if p not in parts]
        if missing:
            hint = ("; a Flux IP-Adapter has biases on its image key/value projections - is this an SD 1.5 / SDXL "
                    "IP-Adapter?") if all(p.endswith("weight") for p in parts) else ""
            raise IPAdapterFormatError(f"{source}: double-stream block {i} lacks {missing}{hint}")
        k, v, kb, vb = (parts[p] for p in _PARTS)
        if k.ndim != 2 or k.shape != v.shape or kb.shape != (k.shape[0],) or vb.shape != kb.shape:
            raise IPAdapterFormatError(f"{source}: block {i}: to_k_ip {tuple(k.shape)} / {tuple(kb.shape)} and to_v_ip "
                                       f"{tuple(v.shape)} / {tuple(vb.shape)} are not two equal linear layers")
        out[i] = (k, v, kb, vb)
    return out


def convert_flux(state: Mapping[str, Any], source: str = "the state dict") -> IPAdapterWeights:
    """One Flux IP-Adapter (XLabs or Diffusers layout) -> :class:`IPAdapterWeights` whose ``layers`` map each
    double-stream block to ``(to_k_ip.weight, to_v_ip.weight, to_k_ip.bias, to_v_ip.bias)``."""
    if not isinstance(state, Mapping):
        raise TypeError(f"a Flux IP-Adapter state dict must be a mapping, got {type(state).__name__}")
    image_proj, group = _split(state, source)
    if not image_proj or not group:
        raise IPAdapterFormatError(f"{source}: not a Flux IP-Adapter: it needs an image projection "
                                   "(ip_adapter_proj_model.* / image_proj.*) and per-block image key/value weights "
                                   f"(found {sorted(state)[:4]})")
    if "proj.weight" not in image_proj:
        raise IPAdapterFormatError(f"{source}: Flux IP-Adapters have a plain image projection (proj, norm); this one has "
                                   f"{sorted(image_proj)[:4]} (IP-Adapter Plus / Full-face projections are for SD "
                                   "and SDXL)")
    bad = [k for k, v in image_proj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise IPAdapterFormatError(f"{source}: image_proj {bad[:3]} are not tensors")
    kind, cls, args, proj_state, tokens = _plain(image_proj, source)
    weights = IPAdapterWeights(kind, cls, args, proj_state, _flux_layers(group, source), tokens, source)
    weights.build_projection()  # every projection shape checked now
    if weights.token_width != args["cross_attention_dim"]:
        raise IPAdapterFormatError(f"{source}: the image projection makes tokens of width {args['cross_attention_dim']} "
                                   f"but to_k_ip takes {weights.token_width}")
    return weights


# ---------------------------------------------------------------------------- the processor
class FluxIPAdapterAttnProcessor(nn.Module):
    """A double-stream block's attention plus image-prompt attention (Diffusers' ``FluxIPAdapterAttnProcessor``).

    ``hidden_size``: the attention's inner width; ``cross_attention_dim``: the image tokens' width;
    ``num_tokens``: tokens per image, one entry per adapter; ``scale``: one number per adapter.  The joint
    attention is ``base_processor``'s (the layer's processor before, so its backend and slicing stay); the
    image queries ``norm_q(to_q(x))`` (no rotary embedding) attend to ``to_k_ip[i](tokens_i)`` /
    ``to_v_ip[i](tokens_i)``, and ``sum_i scale_i * Attn_i`` is returned as a third output.
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, num_tokens: Sequence[int] | int = (4,),
                 scale: float | list[float] = 1.0, device=None, dtype=None, base_processor: Any = None):
        super().__init__()
        num_tokens = list(num_tokens) if isinstance(num_tokens, (list, tuple)) else [num_tokens]
        scales = list(scale) if isinstance(scale, list) else [scale] * len(num_tokens)
        if len(scales) != len(num_tokens):
            raise ValueError(f"scale has {len(scales)} entries for {len(num_tokens)} IP-Adapters")
        self.hidden_size, self.cross_attention_dim, self.num_tokens, self.scale = \
            hidden_size, cross_attention_dim, num_tokens, scales
        self.to_k_ip = nn.ModuleList([nn.Linear(cross_attention_dim, hidden_size, device=device, dtype=dtype)
                                      for _ in num_tokens])
        self.to_v_ip = nn.ModuleList([nn.Linear(cross_attention_dim, hidden_size, device=device, dtype=dtype)
                                      for _ in num_tokens])
        if base_processor is None:
            raise ValueError("FluxIPAdapterAttnProcessor wraps the layer's own processor: pass base_processor")
        # Kept out of the module tree (a processor may be a module; its parameters belong to the layer).
        object.__setattr__(self, "base_processor", base_processor)

    @property
    def backend(self):
        return getattr(self.base_processor, "backend", None)

    @property
    def slice_size(self):
        return getattr(self.base_processor, "slice_size", None)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None,
                 ip_hidden_states: Sequence[torch.Tensor] | None = None, ip_adapter_masks: Any = None, **kwargs: Any):
        out = self.base_processor(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                  attention_mask=attention_mask, image_rotary_emb=image_rotary_emb, **kwargs)
        if encoder_hidden_states is None or ip_hidden_states is None:
            return out
        if ip_adapter_masks is not None:
            raise ValueError("ip_adapter_masks: the Flux IP-Adapter has no region masks")
        if len(ip_hidden_states) != len(self.to_k_ip):
            raise ValueError(f"got image tokens for {len(ip_hidden_states)} IP-Adapters; {len(self.to_k_ip)} are loaded")
        image_out, text_out = out
        query = attn.split_heads(attn.to_q(hidden_states), attn.norm_q)
        extra = None
        for tokens, scale, to_k, to_v in zip(ip_hidden_states, self.scale, self.to_k_ip, self.to_v_ip):
            if scale == 0:
                continue
            tokens = tokens.flatten(1, 2) if tokens.ndim == 4 else tokens  # (batch, images * tokens, width)
            part = attn.attend(query, attn.split_heads(to_k(tokens)), attn.split_heads(to_v(tokens)), None,
                               backend=self.backend, slice_size=self.slice_size)
            part = scale * attn.merge_heads(part).to(query.dtype)
            extra = part if extra is None else extra + part
        return image_out, text_out, torch.zeros_like(image_out) if extra is None else extra

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, num_tokens={self.num_tokens}, scale={self.scale}"


# ---------------------------------------------------------------------------- installing
@dataclass
class _Saved:
    processors: dict[str, Any]      # double-stream attention name -> its processor before
    had_proj: bool
    proj: Any
    hook: Any                       # the forward pre-hook's handle


def double_stream_layers(transformer: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, attention)`` of each double-stream block (text and image streams: ``add_k_proj``)."""
    blocks = getattr(transformer, "transformer_blocks", None)
    if blocks is None:
        return []
    return [(f"transformer_blocks.{i}.attn", b.attn) for i, b in enumerate(blocks)
            if getattr(getattr(b, "attn", None), "add_k_proj", None) is not None]


def flux_ip_processors(transformer: nn.Module | None) -> dict[str, FluxIPAdapterAttnProcessor]:
    """``{attention name: processor}`` of the installed Flux IP-Adapter layers, in block order."""
    if transformer is None:
        return {}
    return {n: m.processor for n, m in double_stream_layers(transformer)
            if isinstance(m.processor, FluxIPAdapterAttnProcessor)}


def installed(transformer: nn.Module | None) -> bool:
    return transformer is not None and getattr(transformer, _SAVED, None) is not None


def flux_projection_layers(transformer: nn.Module | None) -> list[nn.Module]:
    proj = getattr(transformer, "encoder_hid_proj", None) if installed(transformer) else None
    return list(proj.image_projection_layers) if isinstance(proj, MultiIPAdapterImageProjection) else []


def _argument_index(model: nn.Module, name: str) -> int | None:
    params = [p.name for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return params.index(name) if name in params else None


def _projection_hook(index: int | None):
    """A forward pre-hook: image embeddings (the ``ip_adapter_image_embeds`` keyword or ``joint_attention_kwargs``
    entry) -> ``joint_attention_kwargs["ip_hidden_states"]`` through ``encoder_hid_proj``; the caller's dict is
    not changed."""

    def before(module, args, kwargs):
        embeds = kwargs.pop(EMBEDS, None)
        positional = "joint_attention_kwargs" not in kwargs and index is not None and len(args) > index
        extra = args[index] if positional else kwargs.get("joint_attention_kwargs")
        if isinstance(extra, dict) and EMBEDS in extra:
            extra = dict(extra)
            given = extra.pop(EMBEDS)
            embeds = given if embeds is None else embeds
        if embeds is None:
            return args, kwargs
        if isinstance(embeds, torch.Tensor):
            embeds = [embeds]
        proj = module.encoder_hid_proj
        dtype = next(proj.parameters()).dtype
        extra = dict(extra or {})
        extra["ip_hidden_states"] = proj([e.to(dtype) for e in embeds])
        if positional:
            args = (*args[:index], extra, *args[index + 1:])
        else:
            kwargs["joint_attention_kwargs"] = extra
        return args, kwargs

    return before


def remove(transformer: nn.Module) -> None:
    """Every Flux IP-Adapter out of ``transformer``: its own processors and attributes again."""
    saved: _Saved | None = getattr(transformer, _SAVED, None)
    if saved is None:
        return
    layers = dict(double_stream_layers(transformer))
    for name, processor in saved.processors.items():
        layers[name].set_processor(processor)
    saved.hook.remove()
    if saved.had_proj:
        transformer.encoder_hid_proj = saved.proj
    elif "encoder_hid_proj" in transformer._modules or "encoder_hid_proj" in transformer.__dict__:
        delattr(transformer, "encoder_hid_proj")
    del transformer.__dict__[_SAVED]


class FluxIPAdapter:
    """One or several Flux IP-Adapters (state dicts in the XLabs or Diffusers layout, or converted weights)."""

    component_kind = "adapter"

    def __init__(self, state_dicts: Mapping | Sequence[Mapping | IPAdapterWeights], sources: Sequence[str] | None = None):
        items = [state_dicts] if isinstance(state_dicts, (Mapping, IPAdapterWeights)) else list(state_dicts)
        if not items:
            raise ValueError("FluxIPAdapter needs at least one IP-Adapter state dict")
        sources = list(sources) if sources is not None else [f"IP-Adapter {i}" for i in range(len(items))]
        self.adapters = [x if isinstance(x, IPAdapterWeights) else convert_flux(x, s) for x, s in zip(items, sources)]

    @property
    def num_adapters(self) -> int:
        return len(self.adapters)

    def check(self, transformer: nn.Module) -> list[tuple[str, nn.Module]]:
        """The double-stream attentions the adapters fill; ``ValueError`` naming the file when they do not fit."""
        layers = double_stream_layers(transformer)
        if not layers or getattr(transformer, "single_transformer_blocks", None) is None:
            raise ValueError(f"a Flux IP-Adapter needs a FluxTransformer2DModel, got {type(transformer).__name__}")
        for adapter in self.adapters:
            if set(adapter.layers) != set(range(len(layers))):
                have = sorted(adapter.layers)
                raise ValueError(f"{adapter.source}: has image key/value weights for {len(have)} double-stream blocks "
                                 f"({have[0]}..{have[-1]}) but this transformer has {len(layers)}; is it an "
                                 "IP-Adapter for another Flux model?")
            for i, (name, attn) in enumerate(layers):
                k = adapter.layers[i][0]
                need = (attn.to_q.out_features, adapter.token_width)
                if tuple(k.shape) != need:
                    raise ValueError(f"{adapter.source}: block {i}'s to_k_ip weight has shape {tuple(k.shape)} but "
                                     f"{name} needs {need}; is it an IP-Adapter for another model?")
        return layers

    def apply(self, model: nn.Module, scale: float = 1.0, *, checked: list | None = None) -> None:
        """Install the adapters in ``model`` (replacing Flux IP-Adapters already there) with ``scale`` everywhere."""
        layers = checked if checked is not None else self.check(model)
        remove(model)
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        projection = MultiIPAdapterImageProjection(
            [a.build_projection().to(device=device, dtype=dtype) for a in self.adapters])
        saved = _Saved({}, "encoder_hid_proj" in model._modules or "encoder_hid_proj" in model.__dict__,
                       getattr(model, "encoder_hid_proj", None), None)
        for i, (name, attn) in enumerate(layers):
            with torch.device("meta"):
                processor = FluxIPAdapterAttnProcessor(attn.to_q.out_features, self.adapters[0].token_width,
                                                       [a.num_tokens for a in self.adapters], float(scale),
                                                       base_processor=attn.processor)
            state = {}
            for j, adapter in enumerate(self.adapters):
                kw, vw, kb, vb = adapter.layers[i]
                state.update({f"to_k_ip.{j}.weight": kw, f"to_v_ip.{j}.weight": vw,
                              f"to_k_ip.{j}.bias": kb, f"to_v_ip.{j}.bias": vb})
            processor.load_state_dict(state, strict=True, assign=True)
            saved.processors[name] = attn.processor
            attn.set_processor(processor.to(device=device, dtype=dtype))
        model.encoder_hid_proj = projection
        saved.hook = model.register_forward_pre_hook(
            _projection_hook(_argument_index(model, "joint_attention_kwargs")), with_kwargs=True)
        object.__setattr__(model, _SAVED, saved)

    def remove(self, model: nn.Module) -> None:
        remove(model)


__all__ = ["EMBEDS", "FluxIPAdapter", "FluxIPAdapterAttnProcessor", "convert_flux", "double_stream_layers",
           "flux_ip_processors", "flux_projection_layers", "installed", "remove"]
