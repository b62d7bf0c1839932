"""LyCORIS LoHa and LoKr layers (KohakuBlueleaf/LyCORIS), loaded into peft's ``LoHa`` / ``LoKr`` layers.

A LyCORIS file stores, per adapted layer, factors whose product is the weight change ``dW``, times
``scale = alpha / rank``:

LoHa (Hadamard product, Hyeon-Woo et al. 2022, "FedPara", arXiv:2108.06098)
    ``dW = (hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b)``, each ``(out, r) @ (r, in[*kh*kw])``; a
    CP-decomposed convolution has ``hada_t1`` / ``hada_t2`` ``(r, r, kh, kw)`` with ``hada_w*_a`` ``(r, out)``,
    ``hada_w*_b`` ``(r, in)``: ``W_i[p, q, k, l] = sum_ij t_i[i, j, k, l] w_a[i, p] w_b[j, q]``.
LoKr (Kronecker product, Yeh et al. 2023, "Navigating Text-To-Image Customization", arXiv:2309.14859)
    ``dW = kron(w1, w2)`` with ``w1 = lokr_w1`` ``(a, c)`` or ``lokr_w1_a @ lokr_w1_b``, and ``w2 = lokr_w2``
    ``(b, d[, kh, kw])``, ``lokr_w2_a @ lokr_w2_b``, or CP-decomposed with ``lokr_t2``; ``out = a * b``,
    ``in = c * d``.  With neither factor decomposed LyCORIS uses ``scale = 1`` (there is no rank).

peft implements both layer types; the factors are put into its parameter dicts as stored (the file fixes
their shapes, not peft's factorisation rule), with peft's ``r`` / ``alpha`` / ``scaling`` set to give the
file's scale, so ``set_adapters`` weights, the per-call scale, ``fuse_lora`` and unloading work as for LoRA.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
import torch.nn as nn

LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
LYCORIS_PARTS = LOHA_PARTS + LOKR_PARTS


@dataclasses.dataclass
class LycorisWeight:
    """One LoHa or LoKr layer: its factors by LyCORIS name and its ``alpha`` (``None``: the rank)."""

    kind: str                                  # "loha" or "lokr"
    tensors: dict[str, torch.Tensor]
    alpha: float | None = None

    @property
    def rank(self) -> int | None:
        """The inner dimension of the decomposed factors (``None``: a LoKr of two full matrices)."""
        for part in ("hada_w1_b", "lokr_w2_b", "lokr_w1_b"):
            if part in self.tensors:
                return int(self.tensors[part].shape[0])
        return None

    @property
    def scale(self) -> float:
        """``alpha / rank``, LyCORIS' factor on ``dW`` (1 for a LoKr without a rank)."""
        r = self.rank
        return 1.0 if r is None else (r if self.alpha is None else self.alpha) / r


def check_parts(w: LycorisWeight) -> str | None:
    """Why ``w``'s set of factors is incomplete or inconsistent (``None`` when it is fine)."""
    have = set(w.tensors)
    if w.kind == "loha":
        need = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}
        if not need <= have:
            return f"a LoHa layer needs {sorted(need)}, it has {sorted(have)}"
        if ("hada_t1" in have) != ("hada_t2" in have):
            return "a CP-decomposed LoHa layer needs both hada_t1 and hada_t2"
        return None
    for side in ("w1", "w2"):
        full, pair = f"lokr_{side}" in have, {f"lokr_{side}_a", f"lokr_{side}_b"} <= have
        if full == pair:
            return f"a LoKr layer needs lokr_{side} or both lokr_{side}_a and lokr_{side}_b, it has {sorted(have)}"
    if "lokr_t2" in have and "lokr_w2" in have:
        return "lokr_t2 goes with lokr_w2_a / lokr_w2_b, not lokr_w2"
    return None


def _cp(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """CP (Tucker) rebuild: ``t (r, r, kh, kw)``, ``wa (r, out)``, ``wb (r, in)`` -> ``(out, in, kh, kw)``."""
    return torch.einsum("ijkl,ip,jq->pqkl", t, wa, wb)


def delta_weight(w: LycorisWeight, scale: float | None = None) -> torch.Tensor:
    """``dW`` (times ``scale``, default the layer's own) as LyCORIS defines it, before reshaping to the layer."""
    t = w.tensors
    scale = w.scale if scale is None else scale
    if w.kind == "loha":
        if "hada_t1" in t:
            return _cp(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"]) * _cp(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"]) * scale
        return (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * scale
    w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
    elif "lokr_t2" in t:
        w2 = _cp(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    else:
        w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
    if w2.ndim == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1.contiguous(), w2.contiguous()) * scale  # (kron views its inputs)


def fit(w: LycorisWeight, module: nn.Module) -> str | None:
    """Why ``w`` does not fit ``module`` (``None`` when its ``dW`` reshapes to the module's weight)."""
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        return f"LyCORIS on a {type(module).__name__} is not supported"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return f"grouped convolution (groups={module.groups}) is not supported"
    meta = LycorisWeight(w.kind, {k: torch.empty(v.shape, device="meta") for k, v in w.tensors.items()}, w.alpha)
    try:
        shape = tuple(delta_weight(meta, 1.0).shape)
    except RuntimeError as err:
        return f"its {w.kind} factors do not multiply ({' / '.join(f'{k} {tuple(v.shape)}' for k, v in w.tensors.items())}): {err}"
    want = tuple(module.weight.shape)
    if shape[0] != want[0] or torch.Size(shape).numel() != module.weight.numel():
        return f"its {w.kind} factors make a weight change of shape {shape}; the layer's weight is {want}"
    return None


def _kind_of(layer: nn.Module) -> str:
    name = type(layer).__module__
    return "loha" if ".loha." in name else "lokr" if ".lokr." in name else "lora"


def inject(model: nn.Module, adapter_name: str, layers: Mapping[str, LycorisWeight],
           reference: Mapping[str, nn.Module]) -> None:
    """Add LyCORIS adapter ``adapter_name`` (all layers of one kind, already checked) to ``model`` through peft."""
    from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model

    from kernel_lora.names import is_tuner_layer

    kind = next(iter(layers.values())).kind
    for path in layers:
        present = model.get_submodule(path)
        if is_tuner_layer(present) and _kind_of(present) != kind:
            raise ValueError(f"{path} already holds a {_kind_of(present)} adapter; peft does not stack a {kind} "
                             "adapter on the same layer (delete the other adapter first)")
    # r=1: peft's own (random) factors are replaced by the file's below, so keep them small.
    config = (LoHaConfig if kind == "loha" else LoKrConfig)(r=1, alpha=1.0, target_modules=sorted(layers),
                                                            inference_mode=True)
    grads = {id(p): p.requires_grad for p in model.parameters()}
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    for path, w in layers.items():
        layer = model.get_submodule(path)
        base = reference[path].weight
        for attr in layer.adapter_layer_names:
            store = getattr(layer, attr)
            if adapter_name in store:
                del store[adapter_name]
        for part, tensor in w.tensors.items():
            getattr(layer, part)[adapter_name] = nn.Parameter(tensor.to(device=base.device, dtype=base.dtype),
                                                              requires_grad=False)
        r = w.rank or 1
        layer.r[adapter_name] = r
        layer.alpha[adapter_name] = w.scale * r
        layer.scaling[adapter_name] = w.scale
    for p in model.parameters():
        flag = grads.get(id(p))
        if flag is not None and p.requires_grad != flag:
            p.requires_grad_(flag)


__all__ = ["LOHA_PARTS", "LOKR_PARTS", "LYCORIS_PARTS", "LycorisWeight", "check_parts", "delta_weight", "fit", "inject"]
