"""LoRA checkpoint layouts, detected from the keys, read into one form: per component, per layer.

LoRA (Hu et al. 2021, arXiv:2106.09685) adds ``scale * up @ down`` to a layer's weight, with
``down`` ``(rank, in)`` and ``up`` ``(out, rank)`` (4-d for convolutions) and ``scale = alpha / rank``.
The layouts found in the wild store the same pairs under different names:

``peft`` (Diffusers' current files)
    ``unet.<layer>.lora_A.weight`` / ``lora_B.weight`` (``lora_B.bias`` with ``lora_bias``); the
    denoiser of a transformer pipeline is ``transformer.``.  The ``alpha`` per component comes from
    the file's ``lora_adapter_metadata`` (else ``alpha = rank``); ``<layer>.alpha`` keys also count.
``diffusers``
    ``unet.<layer>.lora.down.weight`` / ``lora.up.weight``;
    ``text_encoder.<layer>.lora_linear_layer.down.weight`` / ``up.weight``.
``attn-procs`` (Diffusers' older attention-processor files)
    ``<attention>.processor.to_q_lora.down.weight`` (``to_k``, ``to_v``, ``to_out``), without a
    component prefix for the UNet; ``text_encoder.<attention>.to_q_lora.down.weight`` maps to ``q_proj``.
``kohya`` (kohya-ss sd-scripts, AUTOMATIC1111)
    ``lora_unet_<layer with _ for .>.lora_down.weight`` / ``lora_up.weight`` / ``alpha``;
    ``lora_te_`` (or ``lora_te1_``) for the text encoder, ``lora_te2_`` for SDXL's second one;
    ``lora_transformer_`` for a transformer under its Diffusers names.  For Flux, ``lora_unet_``
    names the original (Black Forest Labs) blocks: ``double_blocks_0_img_attn_qkv``.
``xlabs`` (XLabs-AI's Flux trainer)
    ``double_blocks.<i>.processor.qkv_lora1.down.weight`` (``qkv_lora2``, ``proj_lora1``,
    ``proj_lora2``; ``single_blocks.<i>.processor.qkv_lora`` / ``proj_lora``), no alpha.

LyCORIS (KohakuBlueleaf/LyCORIS) LoHa and LoKr layers come in the kohya names (or as dotted module
paths) with their own factors instead of ``lora_down`` / ``lora_up``: ``hada_w1_a``, ``hada_w1_b``,
``hada_w2_a``, ``hada_w2_b`` (``hada_t1`` / ``hada_t2`` for CP-decomposed convolutions) and ``lokr_w1`` (or
``lokr_w1_a`` / ``lokr_w1_b``), ``lokr_w2`` (or ``lokr_w2_a`` / ``lokr_w2_b``, ``lokr_t2``), with ``alpha``;
they are read into :class:`kernel_lora.lycoris.LycorisWeight` and loaded into peft's LoHa / LoKr layers.

Layer names are resolved against the model (:mod:`kernel_lora.names`), including the original
Flux names whose fused ``qkv`` projections are split over ``to_q`` / ``to_k`` / ``to_v``.
A layout that matches none of these raises ``ValueError`` naming the keys; nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import torch

from kernel_lora.lycoris import LYCORIS_PARTS, LycorisWeight, check_parts

#: Component prefixes of the dotted layouts, longest first (``text_encoder_2.`` before ``text_encoder.``).
COMPONENT_PREFIXES = ("text_encoder_3", "text_encoder_2", "text_encoder", "transformer", "unet")
#: kohya-ss prefixes; ``None`` is the pipeline's denoiser (the UNet, or the transformer of SD3 / Flux / PixArt).
KOHYA_PREFIXES = {"lora_unet_": None, "lora_transformer_": None, "lora_te1_": "text_encoder",
                  "lora_te2_": "text_encoder_2", "lora_te3_": "text_encoder_3", "lora_te_": "text_encoder"}

_DOTTED_SUFFIXES = (
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_B.bias", "up_bias"),
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".alpha", "alpha"),
    *((f".{part}", part) for part in LYCORIS_PARTS),
)
_KOHYA_SUFFIXES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha",
                   **{part: part for part in LYCORIS_PARTS}}
# Attention-processor names: the projection each one adapts, in the UNet and in a CLIP text encoder.
_ATTN_PROC = re.compile(r"^(?P<stem>.*?)(?:\.processor)?\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)\.weight$")
_ATTN_PROC_TARGET = {
    "unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
    "text": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"},
}
# XLabs' Flux processors: the original projection each one adapts.
_XLABS = re.compile(r"^(?:diffusion_model\.)?(?P<block>double_blocks|single_blocks)\.(?P<index>\d+)\.processor\."
                    r"(?P<lora>[a-z_]+\d?)\.(?P<part>down|up)\.weight$")
_XLABS_BLOCK = re.compile(r"^(?:diffusion_model\.)?(?:double_blocks|single_blocks)\.\d+\.processor\.")
_XLABS_TARGET = {
    ("double_blocks", "qkv_lora1"): "img_attn.qkv", ("double_blocks", "qkv_lora2"): "txt_attn.qkv",
    ("double_blocks", "proj_lora1"): "img_attn.proj", ("double_blocks", "proj_lora2"): "txt_attn.proj",
    ("single_blocks", "qkv_lora"): "linear1", ("single_blocks", "proj_lora"): "linear2",
}
_UNSUPPORTED = {
    "lora_magnitude_vector": "DoRA (weight-decomposed LoRA)",
    "dora_scale": "DoRA (weight-decomposed LoRA)",
    "lora_mid": "LoCon with a Tucker middle factor",
    "hada_": "a LoHa (LyCORIS) factor of an unknown kind",
    "lokr_": "a LoKr (LyCORIS) factor of an unknown kind",
    "lora_embedding_": "embedding LoRA",
    "query_norm.scale": "Flux Control LoRA (BFL layout: it also replaces norm weights and widens the input layer)",
    ".norm_q.weight": "Flux Control LoRA (it also replaces norm weights)",
    ".norm_k.weight": "Flux Control LoRA (it also replaces norm weights)",
    "base_model.model.": "a peft PeftModel save (keys 'base_model.model.<layer>'); save with get_peft_model_state_dict",
    ".diff_b": "a full bias difference ('diff_b') next to the LoRA",
}
_LAYOUTS = (
    "Diffusers/peft ('unet.<layer>.lora_A.weight'), Diffusers ('<layer>.lora.down.weight', "
    "'<layer>.lora_linear_layer.down.weight'), attention processors ('<layer>.to_q_lora.down.weight') "
    "kohya-ss ('lora_unet_<layer>.lora_down.weight', 'lora_te_...') or XLabs Flux "
    "('double_blocks.<i>.processor.qkv_lora1.down.weight')"
)


@dataclasses.dataclass
class LoraWeight:
    """One adapted layer: ``down`` ``(r, in[, kh, kw])``, ``up`` ``(out, r[, 1, 1])``, ``alpha`` (``None``: ``r``)."""

    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    up_bias: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """``alpha / rank``: the weight of ``up @ down`` at adapter weight 1."""
        return (self.rank if self.alpha is None else self.alpha) / self.rank


@dataclasses.dataclass
class ComponentLora:
    """The layers of one component, keyed as the file names them.

    ``naming`` is ``"dotted"`` (module paths, possibly with or without CLIP's ``text_model.``, or a
    model's original names such as Flux's ``double_blocks.0.img_attn.qkv``) or ``"kohya"`` (those
    names with ``_`` for ``.``), resolved against the model by :mod:`kernel_lora.names`.  ``layout``
    is the file's layout, for messages.
    """

    layers: dict[str, LoraWeight | LycorisWeight]
    naming: str = "dotted"
    layout: str = "peft"

    @property
    def kind(self) -> str:
        """``"lora"``, or the LyCORIS algorithm (``"loha"``, ``"lokr"``) of every layer."""
        first = next(iter(self.layers.values()), None)
        return first.kind if isinstance(first, LycorisWeight) else "lora"


@dataclasses.dataclass
class ParsedLora:
    layout: str
    components: dict[str, ComponentLora]


class LoraFormatError(ValueError):
    """A LoRA file or state dict whose keys match no known layout (a ``ValueError``)."""


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _unsupported(keys) -> str | None:
    for key in keys:
        for marker, what in _UNSUPPORTED.items():
            if marker in key:
                return f"{what} is not supported (key {key!r})"
    return None


def _scalar(value: Any, key: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise LoraFormatError(f"{key!r} should be a scalar alpha, got a tensor of shape {tuple(value.shape)}")
        return float(value.item())
    return float(value)


_KIND_NAMES = {"loha": "LoHa", "lokr": "LoKr"}


def _store(layers: dict[str, LoraWeight | LycorisWeight], name: str, part: str, value: Any, key: str) -> None:
    layer = layers.setdefault(name, LoraWeight())
    if part == "alpha":
        layer.alpha = _scalar(value, key)
        return
    if part in LYCORIS_PARTS:
        kind = "loha" if part.startswith("hada_") else "lokr"
        if isinstance(layer, LoraWeight):
            if layer.down is not None or layer.up is not None or layer.up_bias is not None:
                raise LoraFormatError(f"layer {name!r} has both LoRA and LyCORIS {_KIND_NAMES[kind]} weights (one is "
                                      f"{key!r})")
            layer = layers[name] = LycorisWeight(kind, {}, layer.alpha)
        elif layer.kind != kind:
            raise LoraFormatError(f"layer {name!r} mixes LoHa and LoKr factors (one is {key!r})")
        if not isinstance(value, torch.Tensor):
            raise LoraFormatError(f"{key!r} should be a tensor, got {type(value).__name__}")
        if part in layer.tensors:
            raise LoraFormatError(f"two keys give {part} of layer {name!r} (one of them {key!r})")
        layer.tensors[part] = value
        return
    if isinstance(layer, LycorisWeight):
        raise LoraFormatError(f"layer {name!r} has both LyCORIS {_KIND_NAMES[layer.kind]} and LoRA weights (one is "
                              f"{key!r})")
    if not isinstance(value, torch.Tensor):
        raise LoraFormatError(f"{key!r} should be a tensor, got {type(value).__name__}")
    if getattr(layer, part) is not None:
        raise LoraFormatError(f"two keys give the {part} weight of layer {name!r} (one of them {key!r})")
    setattr(layer, part, value)


def _check_pairs(components: dict[str, ComponentLora], source: str) -> None:
    for component, comp in components.items():
        kinds = sorted({w.kind if isinstance(w, LycorisWeight) else "lora" for w in comp.layers.values()})
        if len(kinds) > 1:
            raise LoraFormatError(f"{source}: {component} mixes layers of kinds {kinds}; one adapter holds one kind")
        for name, layer in comp.layers.items():
            if isinstance(layer, LycorisWeight):
                problem = check_parts(layer)
                if problem:
                    raise LoraFormatError(f"{source}: layer {name!r} of {component}: {problem}")
                continue
            if layer.down is None or layer.up is None:
                missing = "down (lora_A)" if layer.down is None else "up (lora_B)"
                raise LoraFormatError(f"{source}: layer {name!r} of {component} has no {missing} weight")
            if layer.down.ndim not in (2, 4) or layer.up.ndim not in (2, 4):
                raise LoraFormatError(
                    f"{source}: layer {name!r} of {component} has weights of shapes {tuple(layer.down.shape)} / "
                    f"{tuple(layer.up.shape)}; LoRA factors are 2-d (linear) or 4-d (convolution)"
                )
            if layer.up.shape[1] != layer.down.shape[0]:
                raise LoraFormatError(
                    f"{source}: layer {name!r} of {component}: down has rank {layer.down.shape[0]} but up has "
                    f"{layer.up.shape[1]} input features"
                )


def is_kohya(keys) -> bool:
    keys = list(keys)
    return bool(keys) and all(k.startswith(tuple(KOHYA_PREFIXES)) for k in keys)


def _parse_kohya(state_dict: Mapping[str, Any], source: str, denoiser: str) -> ParsedLora:
    components: dict[str, ComponentLora] = {}
    unknown = []
    for key, value in state_dict.items():
        stem, _, suffix = key.partition(".")
        part = _KOHYA_SUFFIXES.get(suffix)
        prefix = next(p for p in sorted(KOHYA_PREFIXES, key=len, reverse=True) if stem.startswith(p))
        if part is None:
            unknown.append(key)
            continue
        component = KOHYA_PREFIXES[prefix] or denoiser
        comp = components.setdefault(component, ComponentLora({}, naming="kohya", layout="kohya"))
        _store(comp.layers, stem[len(prefix):], part, value, key)
    if unknown:
        why = _unsupported(unknown)
        raise LoraFormatError(
            f"{source}: kohya-ss LoRA with keys of no known kind: {_describe(unknown)}"
            + (f"; {why}" if why else "; expected '<name>.lora_down.weight', '<name>.lora_up.weight' and '<name>.alpha'")
        )
    return ParsedLora("kohya", components)


def is_xlabs(keys) -> bool:
    """Any key of an XLabs block processor (the rest must then be XLabs keys too)."""
    return any(_XLABS_BLOCK.match(k) for k in keys)


def _parse_xlabs(state_dict: Mapping[str, Any], source: str, denoiser: str) -> ParsedLora:
    """XLabs' Flux LoRA: each processor LoRA under the original block's projection name (no alpha)."""
    layers: dict[str, LoraWeight] = {}
    unknown = []
    for key, value in state_dict.items():
        match = _XLABS.match(key)
        target = _XLABS_TARGET.get((match["block"], match["lora"])) if match else None
        if target is None:
            unknown.append(key)
            continue
        _store(layers, f"{match['block']}.{match['index']}.{target}", match["part"], value, key)
    if unknown:
        raise LoraFormatError(f"{source}: XLabs Flux LoRA with keys of no known kind: {_describe(unknown)}; expected "
                              "'<double_blocks|single_blocks>.<i>.processor.<qkv_lora1|qkv_lora2|proj_lora1|proj_lora2|"
                              "qkv_lora|proj_lora>.<down|up>.weight'")
    return ParsedLora("xlabs", {denoiser: ComponentLora(layers, layout="xlabs")})


def _split_component(key: str, default: str | None) -> tuple[str | None, str]:
    for prefix in COMPONENT_PREFIXES:
        if key.startswith(prefix + "."):
            return prefix, key[len(prefix) + 1:]
    return default, key


def _parse_dotted(state_dict: Mapping[str, Any], source: str, default_component: str | None) -> ParsedLora:
    components: dict[str, ComponentLora] = {}
    unknown, layouts = [], set()
    for key, value in state_dict.items():
        component, rest = _split_component(key, default_component)
        if component is None:
            unknown.append(key)
            continue
        match = _ATTN_PROC.match(rest)
        if match:
            kind = "text" if component.startswith("text_encoder") else "unet"
            name = f"{match['stem']}.{_ATTN_PROC_TARGET[kind][match['proj']]}"
            part, layout = match["part"], "attn-procs"
        else:
            for suffix, part in _DOTTED_SUFFIXES:
                if rest.endswith(suffix):
                    name = rest[: -len(suffix)]
                    layout = "peft" if "lora_A" in suffix or "lora_B" in suffix else "diffusers"
                    break
            else:
                unknown.append(key)
                continue
        if part != "alpha":
            layouts.add(layout)
        comp = components.setdefault(component, ComponentLora({}))
        _store(comp.layers, name, part, value, key)
    for comp in components.values():
        comp.layout = "+".join(sorted(layouts)) or "peft"
    if unknown:
        why = _unsupported(unknown)
        if why is None:
            if not components:
                why = f"the keys match no LoRA layout; expected {_LAYOUTS}"
            else:
                why = "these keys are not LoRA weights of a known layout"
        raise LoraFormatError(f"{source}: cannot read {_describe(unknown)}: {why}")
    if not components:
        raise LoraFormatError(f"{source}: no LoRA weights found; expected {_LAYOUTS}")
    layout = "+".join(sorted(layouts)) or "peft"
    return ParsedLora(layout, components)


def parse(state_dict: Mapping[str, Any], source: str = "state dict", default_component: str | None = "unet") -> ParsedLora:
    """Read a flat LoRA state dict of any supported layout into :class:`ParsedLora`.

    Keys without a component prefix belong to ``default_component`` (Diffusers' UNet-only files), which
    is also the component of kohya's ``lora_unet_`` / ``lora_transformer_`` keys and of XLabs files
    (the pipeline's denoiser).  Raises :class:`LoraFormatError` (a ``ValueError``) naming ``source``
    and the keys it cannot read.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"a LoRA state dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    if not state_dict:
        raise LoraFormatError(f"{source}: the LoRA state dict is empty")
    denoiser = default_component or "unet"
    if is_kohya(state_dict):
        parsed = _parse_kohya(state_dict, source, denoiser)
    elif is_xlabs(state_dict):
        parsed = _parse_xlabs(state_dict, source, denoiser)
    else:
        parsed = _parse_dotted(state_dict, source, default_component)
    _check_pairs(parsed.components, source)
    return parsed


def _pattern_value(patterns: Mapping[str, Any], name: str) -> Any:
    """peft's pattern rule: a key matches a layer when the layer name ends with it (as a regex)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return None


def apply_metadata(comp: ComponentLora, metadata: Mapping[str, Any] | None, source: str, component: str) -> None:
    """Take ``lora_alpha`` / ``alpha_pattern`` / ``use_rslora`` from Diffusers' per-component metadata."""
    if not metadata:
        return
    if metadata.get("use_dora"):
        raise LoraFormatError(f"{source}: {component} is a DoRA adapter (use_dora in its metadata), which is not supported")
    alpha = metadata.get("lora_alpha")
    patterns = metadata.get("alpha_pattern") or {}
    rslora = bool(metadata.get("use_rslora"))
    for name, layer in comp.layers.items():
        if layer.alpha is not None:
            continue
        value = _pattern_value(patterns, name)
        value = alpha if value is None else value
        if value is None:
            continue
        # rank-stabilised LoRA scales by alpha / sqrt(rank): the same as alpha * sqrt(rank) / rank.
        layer.alpha = float(value) * math.sqrt(layer.rank) if rslora else float(value)


def split_metadata(metadata: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Diffusers' flat ``{"unet.lora_alpha": 8, ...}`` metadata, per component."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in (metadata or {}).items():
        component, rest = _split_component(key, None)
        if component is not None:
            out.setdefault(component, {})[rest] = value
    return out
