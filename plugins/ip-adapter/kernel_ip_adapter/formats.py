"""IP-Adapter files: where they come from, how they are read, and their original layout in module names.

An IP-Adapter file (tencent-ailab/IP-Adapter, the ``h94/IP-Adapter`` checkpoints) holds two groups:

* ``image_proj.*``: the image projection (:mod:`kernel_ip_adapter.projection`), recognised by its keys:

  ============================  ==================================================================
  ``proj``, ``norm``            IP-Adapter: :class:`ImageProjection` (``proj`` -> ``image_embeds``)
  ``latents``, ``layers.*``     IP-Adapter Plus: the resampler; ``layers.<i>.0`` is the attention
                                (``norm1``/``norm2`` -> ``ln0``/``ln1``, ``to_kv`` split into
                                ``attn.to_k``/``attn.to_v``, ``to_out`` -> ``attn.to_out.0``),
                                ``layers.<i>.1`` the feed-forward (``0``/``1``/``3`` -> ``ff.0``,
                                ``ff.1.net.0.proj``, ``ff.1.net.2``)
  ``proj.0``/``proj.2``/``proj.3``  IP-Adapter Full-face: MLP (``ff.net.0.proj``, ``ff.net.2``) + ``norm``
  ``proj.0``/``proj.2``, ``norm``  IP-Adapter FaceID: MLP of the face embedding to tokens + ``norm``
  ``perceiver_resampler.*``     IP-Adapter FaceID Plus / PlusV2: the face MLP (``proj.0``/``proj.2`` ->
                                ``proj.net.0.proj``/``proj.net.2``, ``norm``) and a resampler named as
                                Plus's above
  ============================  ==================================================================

* ``ip_adapter.<n>.to_k_ip.weight`` / ``to_v_ip.weight``: image key/value projections for attention
  layer number ``n`` of the UNet, counted over all its attention layers in module order (self- and
  cross-attention alike, as the original training code numbered ``unet.attn_processors``).
* FaceID files also hold a LoRA for every attention layer: ``ip_adapter.<n>.to_q_lora.down.weight`` /
  ``up.weight`` (and ``to_k``, ``to_v``, ``to_out``).  They are kept in :attr:`IPAdapterWeights.lora`;
  the pipeline loads them as Diffusers does (:meth:`kernel_ip_adapter.mixin.IPAdapterMixin.load_ip_adapter`).

``.safetensors`` files are flat (``image_proj.proj.weight``); ``.bin`` files hold two nested dicts and
are read with ``torch.load(weights_only=True)`` only.  Sources are a state dict, a file, a folder
(``subfolder`` / ``weight_name``) or a Hub repository (through :mod:`kernel.hub`: its cache,
``HF_HUB_OFFLINE``, ``revision`` ...).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from kernel import hub

from kernel_ip_adapter.projection import (
    IPAdapterFaceIDImageProjection,
    IPAdapterFaceIDPlusImageProjection,
    IPAdapterFullImageProjection,
    IPAdapterPlusImageProjection,
    ImageProjection,
)

_LAYER_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")
_LORA_KEY = re.compile(r"^(\d+)\.((?:to_q|to_k|to_v|to_out)_lora\.(?:down|up)\.weight)$")
#: The LoRA parts a FaceID file holds for each attention layer it adapts.
LORA_PARTS = tuple(f"{p}_lora.{d}.weight" for p in ("to_q", "to_k", "to_v", "to_out") for d in ("down", "up"))
_PLUS_ATTN = re.compile(r"^layers\.(\d+)\.0\.(norm1|norm2|to_q|to_kv|to_out)\.(weight|bias)$")
_PLUS_FF = re.compile(r"^layers\.(\d+)\.1\.(0|1|3)\.(weight|bias)$")
_PLUS_FF_NAMES = {"0": "ff.0", "1": "ff.1.net.0.proj", "3": "ff.1.net.2"}
_PLUS_DIM_HEAD = 64  # the resampler's head width in every released IP-Adapter Plus file


class IPAdapterFormatError(ValueError):
    """A file that is not an IP-Adapter this plugin reads."""


@dataclass
class IPAdapterWeights:
    """One IP-Adapter in module names: its image projection and its per-layer image key/value weights."""

    kind: str                                        # "ip-adapter", "plus", "full", "faceid", "faceid-plus"
    projection_class: type
    projection_args: dict[str, Any]
    projection_state: dict[str, torch.Tensor]
    layers: dict[int, tuple[torch.Tensor, torch.Tensor]]  # attention-layer number -> (to_k_ip, to_v_ip)
    num_tokens: int                                  # image tokens each image becomes
    source: str
    #: FaceID's LoRA: attention-layer number -> {"to_q_lora.down.weight": tensor, ...} (all of LORA_PARTS)
    lora: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def token_width(self) -> int:
        """The width of the image tokens (the ``to_k_ip`` inputs)."""
        return next(iter(self.layers.values()))[0].shape[1]

    def build_projection(self) -> nn.Module:
        """The projection holding these tensors (built on the meta device, then given the tensors)."""
        with torch.device("meta"):
            module = self.projection_class(**self.projection_args)
        try:
            module.load_state_dict(self.projection_state, strict=True, assign=True)
        except RuntimeError as err:
            raise IPAdapterFormatError(f"{self.source}: the image projection does not load ({err})") from None
        return module.eval()


# ---------------------------------------------------------------------------- reading
def _read(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, RuntimeError) as err:
            raise IPAdapterFormatError(f"could not read {path}: it is corrupt or truncated ({err})") from None
    if path.suffix == ".bin":
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises several kinds
            raise IPAdapterFormatError(f"could not read {path} with torch.load(weights_only=True) ({err})") from None
        if not isinstance(state, dict):
            raise IPAdapterFormatError(f"{path} holds a {type(state).__name__}, not a state dict")
        return state
    raise IPAdapterFormatError(f"{path}: IP-Adapter weights must be a .safetensors or .bin file")


def resolve(source: str | os.PathLike, subfolder: str | None, weight_name: str | None, hub_kwargs: dict) -> Path:
    """The local path of the IP-Adapter file ``source`` / ``subfolder`` / ``weight_name`` names."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if weight_name is None:
        raise ValueError(f"weight_name is required to load an IP-Adapter from {str(source)!r} (the file name, e.g. "
                         "'ip-adapter_sd15.safetensors')")
    if not str(weight_name).endswith((".safetensors", ".bin")):
        raise ValueError(f"weight_name={weight_name!r}: IP-Adapter weights must be a .safetensors or .bin file")
    return hub.resolve_file(source, weight_name, subfolder=subfolder or None, **hub_kwargs)


def load(source: Any, subfolder: str | None, weight_name: str | None, hub_kwargs: dict) -> tuple[dict, str]:
    """``(state dict, description)`` of an IP-Adapter given as a dict, a file, a folder or a Hub repo id."""
    if isinstance(source, Mapping):
        return dict(source), "the state dict"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError("pretrained_model_name_or_path_or_dict must be a path, a Hub repo id or a state dict, "
                        f"got {type(source).__name__}")
    path = resolve(source, subfolder, weight_name, hub_kwargs)
    return _read(path), str(path)


# ---------------------------------------------------------------------------- conversion
def _groups(state: Mapping[str, Any], source: str) -> tuple[dict, dict]:
    if isinstance(state.get("image_proj"), Mapping) or isinstance(state.get("ip_adapter"), Mapping):
        image_proj, layers = dict(state.get("image_proj") or {}), dict(state.get("ip_adapter") or {})
        other = [k for k in state if k not in ("image_proj", "ip_adapter")]
    else:
        image_proj = {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")}
        layers = {k[len("ip_adapter."):]: v for k, v in state.items() if k.startswith("ip_adapter.")}
        other = [k for k in state if not k.startswith(("image_proj.", "ip_adapter."))]
    if not image_proj or not layers:
        raise IPAdapterFormatError(f"{source}: not an IP-Adapter file: it needs image_proj.* and ip_adapter.* "
                                   f"tensors (found {sorted(state)[:4]})")
    if other:
        raise IPAdapterFormatError(f"{source}: unexpected entries besides image_proj and ip_adapter: {sorted(other)[:4]}")
    for group in (image_proj, layers):
        bad = [k for k, v in group.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise IPAdapterFormatError(f"{source}: {bad[:3]} are not tensors")
    return image_proj, layers


def _layers(group: dict[str, torch.Tensor], source: str) -> tuple[dict, dict]:
    """``({layer: (to_k_ip, to_v_ip)}, {layer: {LoRA part: tensor}})`` of the ``ip_adapter.*`` group."""
    found: dict[int, dict[str, torch.Tensor]] = {}
    lora: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in group.items():
        m = _LAYER_KEY.match(key)
        if m is not None:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = value
            continue
        m = _LORA_KEY.match(key)
        if m is None:
            raise IPAdapterFormatError(f"{source}: unexpected key ip_adapter.{key} (expected "
                                       "ip_adapter.<n>.to_k_ip.weight / to_v_ip.weight, or a FaceID LoRA's "
                                       "ip_adapter.<n>.to_q_lora.down.weight ...)")
        lora.setdefault(int(m.group(1)), {})[m.group(2)] = value
    out = {}
    for n, pair in sorted(found.items()):
        if set(pair) != {"to_k_ip", "to_v_ip"}:
            raise IPAdapterFormatError(f"{source}: layer {n} has {sorted(pair)} but needs to_k_ip and to_v_ip")
        k, v = pair["to_k_ip"], pair["to_v_ip"]
        if k.ndim != 2 or k.shape != v.shape:
            raise IPAdapterFormatError(f"{source}: layer {n}: to_k_ip {tuple(k.shape)} and to_v_ip {tuple(v.shape)} "
                                       "must be equal 2-d weights")
        out[n] = (k, v)
    for n, parts in sorted(lora.items()):
        missing = [p for p in LORA_PARTS if p not in parts]
        if missing:
            raise IPAdapterFormatError(f"{source}: the FaceID LoRA of attention layer {n} lacks "
                                       f"{['ip_adapter.%d.%s' % (n, p) for p in missing][:3]}; it needs "
                                       "to_q/to_k/to_v/to_out_lora.down/up.weight")
        for proj in ("to_q", "to_k", "to_v", "to_out"):
            down, up = parts[f"{proj}_lora.down.weight"], parts[f"{proj}_lora.up.weight"]
            if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
                raise IPAdapterFormatError(f"{source}: ip_adapter.{n}.{proj}_lora: down {tuple(down.shape)} and up "
                                           f"{tuple(up.shape)} are not a LoRA pair ((rank, in) and (out, rank))")
    return out, lora


def _need(group: dict, keys: tuple[str, ...], source: str, kind: str) -> None:
    missing, extra = sorted(set(keys) - set(group)), sorted(set(group) - set(keys))
    if missing or extra:
        raise IPAdapterFormatError(f"{source}: an {kind} image projection, but missing {missing[:4]} / unexpected "
                                   f"{extra[:4]} image_proj keys")


def _plain(group: dict, source: str) -> tuple:
    _need(group, ("proj.weight", "proj.bias", "norm.weight", "norm.bias"), source, "IP-Adapter")
    width = group["norm.weight"].shape[0]
    out_features, embed_dim = group["proj.weight"].shape
    if out_features % width:
        raise IPAdapterFormatError(f"{source}: proj has {out_features} outputs, not a multiple of the token width {width}")
    tokens = out_features // width
    state = {"image_embeds.weight": group["proj.weight"], "image_embeds.bias": group["proj.bias"],
             "norm.weight": group["norm.weight"], "norm.bias": group["norm.bias"]}
    args = dict(image_embed_dim=embed_dim, cross_attention_dim=width, num_image_text_embeds=tokens)
    return "ip-adapter", ImageProjection, args, state, tokens


def _full(group: dict, source: str) -> tuple:
    keys = tuple(f"proj.{i}.{p}" for i in (0, 2, 3) for p in ("weight", "bias"))
    _need(group, keys, source, "IP-Adapter Full-face")
    inner, embed_dim = group["proj.0.weight"].shape
    width = group["proj.3.weight"].shape[0]
    names = {"proj.0": "ff.net.0.proj", "proj.2": "ff.net.2", "proj.3": "norm"}
    state = {f"{names[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in group.items()}
    args = dict(image_embed_dim=embed_dim, cross_attention_dim=width, inner_dim=inner)
    # Every hidden state is a token: 257 for the ViT-H/14 encoder at 224 px the released files use (informational).
    return "full", IPAdapterFullImageProjection, args, state, 257


def _faceid(group: dict, source: str) -> tuple:
    _need(group, ("proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias"), source,
          "IP-Adapter FaceID")
    inner, embed_dim = group["proj.0.weight"].shape
    out_features, width = group["proj.2.weight"].shape[0], group["norm.weight"].shape[0]
    if out_features % width:
        raise IPAdapterFormatError(f"{source}: proj.2 has {out_features} outputs, not a multiple of the token width "
                                   f"{width}")
    tokens = out_features // width
    names = {"proj.0": "ff.net.0.proj", "proj.2": "ff.net.2", "norm": "norm"}
    state = {f"{names[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in group.items()}
    args = dict(image_embed_dim=embed_dim, cross_attention_dim=width, num_tokens=tokens, inner_dim=inner)
    return "faceid", IPAdapterFaceIDImageProjection, args, state, tokens


def _resampler(group: dict) -> dict[str, torch.Tensor]:
    """A Plus resampler's tensors in module names (``to_kv`` split); keys it does not know are kept as they are."""
    state: dict[str, torch.Tensor] = {}
    for key, value in group.items():
        attn, ff = _PLUS_ATTN.match(key), _PLUS_FF.match(key)
        if attn is not None:
            i, name, kind = attn.groups()
            if name == "to_kv":
                k, v = value.chunk(2, dim=0)
                state[f"layers.{i}.attn.to_k.{kind}"], state[f"layers.{i}.attn.to_v.{kind}"] = k, v
            else:
                new = {"norm1": "ln0", "norm2": "ln1", "to_q": "attn.to_q", "to_out": "attn.to_out.0"}[name]
                state[f"layers.{i}.{new}.{kind}"] = value
        elif ff is not None:
            i, part, kind = ff.groups()
            state[f"layers.{i}.{_PLUS_FF_NAMES[part]}.{kind}"] = value
        else:  # latents, proj_in, proj_out, norm_out, or keys already in module names
            state[key] = value
    return state


def _resampler_shape(state: dict, source: str, kind: str) -> dict[str, Any]:
    """Depth, heads and feed-forward ratio of a converted resampler (checked for the keys they come from)."""
    for key in ("proj_in.weight", "proj_out.weight", "layers.0.attn.to_q.weight", "layers.0.ff.1.net.0.proj.weight"):
        if key not in state:
            raise IPAdapterFormatError(f"{source}: an {kind} image projection needs {key!r} (in the original layout); "
                                       "this file's image_proj is not one this plugin reads")
    width = state["layers.0.attn.to_q.weight"].shape[1]
    return dict(depth=1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers.")), dim_head=_PLUS_DIM_HEAD,
                heads=state["layers.0.attn.to_q.weight"].shape[0] // _PLUS_DIM_HEAD,
                ffn_ratio=state["layers.0.ff.1.net.0.proj.weight"].shape[0] / width)


def _faceid_plus(group: dict, source: str) -> tuple:
    prefix = "perceiver_resampler."
    state = _resampler({k[len(prefix):]: v for k, v in group.items() if k.startswith(prefix)})
    face = {k: v for k, v in group.items() if not k.startswith(prefix)}
    _need(face, ("proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias"), source,
          "IP-Adapter FaceID Plus")
    names = {"proj.0": "proj.net.0.proj", "proj.2": "proj.net.2", "norm": "norm"}
    state.update({f"{names[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in face.items()})
    shape = _resampler_shape(state, source, "IP-Adapter FaceID Plus")
    embed_dims, hidden_dims = state["proj_in.weight"].shape
    tokens, rest = divmod(face["proj.2.weight"].shape[0], embed_dims)
    if rest:
        raise IPAdapterFormatError(f"{source}: proj.2 has {face['proj.2.weight'].shape[0]} outputs, not a multiple of "
                                   f"the resampler width {embed_dims}")
    args = dict(embed_dims=embed_dims, output_dims=state["proj_out.weight"].shape[0], hidden_dims=hidden_dims,
                id_embeddings_dim=face["proj.0.weight"].shape[1], num_tokens=tokens,
                proj_inner_dim=face["proj.0.weight"].shape[0], **shape)
    return "faceid-plus", IPAdapterFaceIDPlusImageProjection, args, state, tokens


def _plus(group: dict, source: str) -> tuple:
    state = _resampler(group)
    if "latents" not in state:
        raise IPAdapterFormatError(f"{source}: an IP-Adapter Plus image projection needs 'latents' (in the original "
                                   "layout); this file's image_proj is not one this plugin reads")
    shape = _resampler_shape(state, source, "IP-Adapter Plus")
    latents = state["latents"]
    args = dict(embed_dims=state["proj_in.weight"].shape[1], output_dims=state["proj_out.weight"].shape[0],
                hidden_dims=latents.shape[2], num_queries=latents.shape[1], **shape)
    return "plus", IPAdapterPlusImageProjection, args, state, latents.shape[1]


def convert(state: Mapping[str, Any], source: str = "the state dict") -> IPAdapterWeights:
    """One IP-Adapter state dict (original layout, flat or nested) -> :class:`IPAdapterWeights`."""
    image_proj, group = _groups(state, source)
    layers, lora = _layers(group, source)
    if any(k.startswith("perceiver_resampler.") for k in image_proj):
        kind, cls, args, proj_state, tokens = _faceid_plus(image_proj, source)
    elif "proj.weight" in image_proj:
        kind, cls, args, proj_state, tokens = _plain(image_proj, source)
    elif "proj.3.weight" in image_proj:
        kind, cls, args, proj_state, tokens = _full(image_proj, source)
    elif "norm.weight" in image_proj:
        kind, cls, args, proj_state, tokens = _faceid(image_proj, source)
    else:
        kind, cls, args, proj_state, tokens = _plus(image_proj, source)
    if lora and not kind.startswith("faceid"):
        raise IPAdapterFormatError(f"{source}: LoRA weights in ip_adapter.* belong to FaceID files, but this file's "
                                   f"image projection is an {kind} one")
    weights = IPAdapterWeights(kind, cls, args, proj_state, layers, tokens, source, lora)
    projection = weights.build_projection()  # checks every shape now, before anything is changed
    width = weights.token_width
    out = (projection.norm_out if hasattr(projection, "norm_out") else projection.norm).normalized_shape[0]
    if out != width:
        raise IPAdapterFormatError(f"{source}: the image projection makes tokens of width {out} but to_k_ip takes {width}")
    return weights
