"""One LoRA (or LyCORIS LoHa / LoKr) for one model, as a :class:`kernel.protocols.Adapter`: ``apply(model, scale)`` /
``remove(model)``.

    adapter = LoraAdapter(load_file("lora.safetensors"), adapter_name="style", component="unet")
    adapter.apply(pipe.unet, 0.8)     # peft LoRA layers, weight 0.8
    adapter.remove(pipe.unet)         # the original modules again, exactly

:meth:`check` does every validation first (layer names, shapes, rank pairs); ``apply`` changes the
model only when all of it passed, so a LoRA for another architecture leaves the model as it was.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from kernel_lora import layers, lycoris
from kernel_lora.flux_names import Target
from kernel_lora.formats import ComponentLora, LoraFormatError, LoraWeight, apply_metadata, parse
from kernel_lora.lycoris import LycorisWeight
from kernel_lora.names import NameTable


def _fit(w: LoraWeight, module: nn.Module) -> LoraWeight | str:
    """``w`` shaped for ``module`` (1x1 convolutions and linear layers are interchangeable), or why it does not fit."""
    down, up = w.down, w.up
    r = down.shape[0]
    if isinstance(module, nn.Linear):
        if down.ndim == 4 and down.shape[2:] == (1, 1) and up.ndim == 4 and up.shape[2:] == (1, 1):
            down, up = down.flatten(1), up.flatten(1)
        want_down, want_up = (r, module.in_features), (module.out_features, r)
    elif isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"grouped convolution (groups={module.groups}) is not supported"
        if down.ndim == 2 and up.ndim == 2 and tuple(module.kernel_size) == (1, 1):
            down, up = down[:, :, None, None], up[:, :, None, None]
        want_down = (r, module.in_channels, *module.kernel_size)
        want_up = (module.out_channels, r, 1, 1)
    else:
        return f"LoRA on a {type(module).__name__} is not supported"
    if tuple(down.shape) != want_down or tuple(up.shape) != want_up:
        return (f"the model's {type(module).__name__} needs down {want_down} / up {want_up}, "
                f"the LoRA has {tuple(w.down.shape)} / {tuple(w.up.shape)}")
    if w.up_bias is not None and tuple(w.up_bias.shape) != (want_up[0],):
        return f"the LoRA bias has shape {tuple(w.up_bias.shape)}, the layer has {want_up[0]} outputs"
    return LoraWeight(down=down, up=up, alpha=w.alpha, up_bias=w.up_bias)


def _rows(t: torch.Tensor | None, target: Target) -> torch.Tensor | None:
    if t is None or target.rows is None:
        return t
    parts = [t[a:b] for a, b in target.rows]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _split(w: LoraWeight, targets: tuple[Target, ...]) -> list[tuple[str, LoraWeight]] | str:
    """One LoRA per target module: a LoRA on a fused projection becomes one per part (or why it cannot).

    ``up``'s rows are stacked like the fused projection's outputs; a LoRA may cover only its first
    parts (XLabs adapts the q, k, v part of a single block's ``linear1``).  Parts share ``down``,
    unless the file stores them block-diagonally (kohya's split-qkv training: rank ``n * k`` whose part
    ``j`` uses only ranks ``j*k .. (j+1)*k``), which is then cut into rank-``k`` LoRAs with the
    same ``alpha / rank``.
    """
    if len(targets) == 1 and targets[0].rows is None:
        return [(targets[0].path, w)]
    sizes = [sum(b - a for a, b in t.rows) for t in targets]
    rows, covered, n = int(w.up.shape[0]), 0, 0
    while n < len(sizes) and covered < rows:
        covered, n = covered + sizes[n], n + 1
    if covered != rows:
        return (f"its up weight has {rows} rows; the fused projection it names has parts of "
                f"{sizes} rows ({', '.join(t.path for t in targets)})")
    targets = targets[:n]
    ups = [_rows(w.up, t) for t in targets]
    biases = [_rows(w.up_bias, t) for t in targets]
    r = w.rank
    if n > 1 and r % n == 0:
        k = r // n
        if not any(ups[j][:, c * k:(c + 1) * k].any() for j in range(n) for c in range(n) if c != j):
            alpha = (w.alpha if w.alpha is not None else r) / n
            return [(t.path, LoraWeight(down=w.down[j * k:(j + 1) * k], up=ups[j][:, j * k:(j + 1) * k].contiguous(),
                                        alpha=alpha, up_bias=biases[j]))
                    for j, t in enumerate(targets)]
    return [(t.path, LoraWeight(down=w.down, up=ups[j], alpha=w.alpha, up_bias=biases[j])) for j, t in enumerate(targets)]


class LoraAdapter:
    """A LoRA state dict for one model (a UNet or transformer, a text encoder, any ``nn.Module`` with matching names).

    ``state_dict`` is any layout :mod:`kernel_lora.formats` reads.  When it holds several components
    (a pipeline file), ``component`` picks one (``"unet"``, ``"transformer"``, ``"text_encoder"``, ``"text_encoder_2"``);
    keys without a component prefix belong to ``component``.  ``metadata`` is Diffusers'
    per-component LoRA metadata (``lora_alpha`` ...).
    """

    component_kind = "adapter"

    def __init__(self, state_dict: Mapping[str, Any] | None = None, adapter_name: str = "default",
                 component: str = "unet", metadata: Mapping[str, Any] | None = None, *, source: str = "state dict",
                 _weights: ComponentLora | None = None):
        if not isinstance(adapter_name, str) or not adapter_name:
            raise ValueError(f"adapter_name must be a non-empty str, got {adapter_name!r}")
        self.adapter_name = adapter_name
        self.component = component
        self.source = source
        if _weights is None:
            if state_dict is None:
                raise TypeError("LoraAdapter needs a state_dict")
            parsed = parse(state_dict, source, default_component=component)
            if component not in parsed.components:
                raise LoraFormatError(f"{source}: no LoRA weights for {component!r}; it has {sorted(parsed.components)}")
            others = sorted(set(parsed.components) - {component})
            if others:
                raise LoraFormatError(f"{source}: holds LoRA weights for {others} besides {component!r}; "
                                      "load it into a pipeline with load_lora_weights, or pass one component's weights")
            _weights = parsed.components[component]
            apply_metadata(_weights, metadata, source, component)
        self.weights = _weights

    def __repr__(self) -> str:
        return f"LoraAdapter({self.adapter_name!r}, {self.component}, {len(self.weights.layers)} layers)"

    # ------------------------------------------------------------------ checking
    def check(self, model: nn.Module) -> dict[str, LoraWeight]:
        """``{module path: weights}`` for ``model``; ``ValueError`` naming every layer that does not fit."""
        return self._check(model)[0]

    def _check(self, model: nn.Module) -> tuple[dict[str, LoraWeight], dict[str, nn.Module]]:
        table = NameTable(model, self.component)
        fitted: dict[str, LoraWeight] = {}
        unknown, wrong = [], []
        for name, w in self.weights.layers.items():
            targets = table.targets(name, self.weights.naming)
            if targets is None:
                unknown.append(name)
                continue
            if isinstance(w, LycorisWeight):
                if len(targets) != 1 or targets[0].rows is not None:
                    wrong.append(f"{name}: a {w.kind} layer on a fused projection of the original model is not "
                                 "supported")
                    continue
                path = targets[0].path
                why = lycoris.fit(w, table.modules[path])
                if why is not None:
                    wrong.append(f"{path}: {why}")
                elif path in fitted:
                    wrong.append(f"{path}: given twice (as {name!r} and another name)")
                else:
                    fitted[path] = w
                continue
            parts = _split(w, targets)
            if isinstance(parts, str):
                wrong.append(f"{name}: {parts}")
                continue
            for path, part in parts:
                result = _fit(part, table.modules[path])
                if isinstance(result, str):
                    wrong.append(f"{path}: {result}" if path == name else f"{path} (as {name!r}): {result}")
                elif path in fitted:
                    wrong.append(f"{path}: given twice (as {name!r} and another name)")
                else:
                    fitted[path] = result
        problems = []
        if unknown:
            shown = ", ".join(repr(n) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            problems.append(f"{len(unknown)} of its {len(self.weights.layers)} layers name no layer of the model: "
                            + shown)
        if wrong:
            more = f"; and {len(wrong) - 3} more" if len(wrong) > 3 else ""
            problems.append(f"{len(wrong)} layers do not fit: " + "; ".join(wrong[:3]) + more)
        if problems:
            layout = self.weights.layout
            raise ValueError(f"{self.source}: this LoRA ({layout} layout) does not fit {self.component} "
                             f"({type(model).__name__}): " + ". ".join(problems)
                             + ". Is it a LoRA for another model (an SDXL LoRA on SD 1.5, say), or in layer names "
                             "this model has no table for?")
        return fitted, {path: table.modules[path] for path in fitted}

    # ------------------------------------------------------------------ Adapter protocol
    def apply(self, model: nn.Module, scale: float = 1.0, *, checked=None, alone: bool = False) -> nn.Module:
        """Add this LoRA to ``model`` at weight ``scale``, next to the adapters already active there
        (``alone``: as the only active one, as Diffusers' ``load_lora_weights`` does).

        ``checked`` is what ``_check(model)`` returned, when the caller validated already.
        """
        if self.adapter_name in layers.adapter_names(model):
            raise ValueError(f"adapter_name {self.adapter_name!r} is already loaded in {type(model).__name__}; "
                             "pick another name or remove it first")
        fitted, modules = self._check(model) if checked is None else checked
        active = [] if alone else layers.active_adapters(model)
        try:
            if self.weights.kind == "lora":
                layers.inject(model, self.adapter_name, fitted, modules)
            else:
                lycoris.inject(model, self.adapter_name, fitted, modules)
        except Exception:
            layers.remove(model, self.adapter_name)
            raise
        names = [n for n in active if n != self.adapter_name] + [self.adapter_name]
        for _, layer in layers.tuner_layers(model):
            layer.set_adapter(names, inference_mode=True)
            layer.set_scale(self.adapter_name, float(scale))
        return model

    def remove(self, model: nn.Module) -> nn.Module:
        """Take this LoRA out of ``model``; layers left without adapters are the original modules again."""
        layers.remove(model, self.adapter_name)
        return model

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def delta(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``{module path: scale * up @ down}``: the weight change at scale 1 (for inspection and tests)."""
        out = {}
        fitted, modules = self._check(model)
        for path, w in fitted.items():
            if isinstance(w, LycorisWeight):
                float32 = LycorisWeight(w.kind, {k: v.float() for k, v in w.tensors.items()}, w.alpha)
                out[path] = lycoris.delta_weight(float32).reshape(modules[path].weight.shape)
                continue
            down, up = w.down.flatten(1).float(), w.up.flatten(1).float()
            out[path] = w.scale * (up @ down)
        return out
