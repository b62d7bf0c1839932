"""Which module of a model a LoRA layer name means, looked up in tables built from the model itself.

Our modules carry Diffusers' names, so a dotted name is a module path, with one allowance: CLIP text
encoders were nested under ``text_model`` before transformers 5 and LoRA files from both eras exist.
kohya-ss names are module paths with ``_`` for ``.``; for SDXL they name the original (SGM/LDM)
UNet's blocks (``input_blocks.4.1`` for ``down_blocks.1.attentions.0``), for Flux the original
model's blocks (``double_blocks.0.img_attn.qkv``, one name for three of our layers:
:mod:`kernel_lora.flux_names`).  Instead of rewriting names with string rules, the tables here list
every adaptable module of the model under each name it can have, so a lookup is exact and a name
that fits no module is reported, not guessed.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from kernel_lora.flux_names import Target, original_names

#: Layer types LoRA can adapt here (peft supports these for LoRA).
ADAPTABLE = (nn.Linear, nn.Conv2d)

_RESNET_SGM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_TOP_SGM = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
            "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


_TUNER_LAYER: list[type] = []


def is_tuner_layer(module: Any) -> bool:
    """A peft adapter layer (peft is imported on first use, not with the package)."""
    if not _TUNER_LAYER:
        from peft.tuners.tuners_utils import BaseTunerLayer

        _TUNER_LAYER.append(BaseTunerLayer)
    return isinstance(module, _TUNER_LAYER[0])


def adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{path: layer}`` of every adaptable layer; a layer that already carries LoRA counts once, as its base layer."""
    out: dict[str, nn.Module] = {}
    wrapped: list[str] = []
    tuned = isinstance(getattr(model, "peft_config", None), dict)  # peft records its adapters there
    for path, module in model.named_modules():
        if wrapped and path.startswith(wrapped[-1] + "."):
            continue
        if tuned and is_tuner_layer(module):
            wrapped.append(path)
            out[path] = module.get_base_layer()
        elif isinstance(module, ADAPTABLE):
            out[path] = module
    return out


def _blocks_sgm(unet: nn.Module) -> dict[str, str]:
    """Diffusers block prefixes of a UNet -> the SGM/LDM UNet's (``down_blocks.1.attentions.0`` -> ``input_blocks.4.1``)."""
    table: dict[str, str] = {}
    index = 1
    for b, block in enumerate(getattr(unet, "down_blocks", None) or []):
        attentions = getattr(block, "attentions", None)
        for i in range(len(block.resnets)):
            table[f"down_blocks.{b}.resnets.{i}"] = f"input_blocks.{index}.0"
            if attentions is not None and i < len(attentions):
                table[f"down_blocks.{b}.attentions.{i}"] = f"input_blocks.{index}.1"
            index += 1
        if getattr(block, "downsamplers", None) is not None:
            table[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        table["mid_block.resnets.0"] = "middle_block.0"
        if getattr(mid, "attentions", None) is not None:
            table["mid_block.attentions.0"] = "middle_block.1"
            table["mid_block.resnets.1"] = "middle_block.2"
        elif len(mid.resnets) > 1:
            table["mid_block.resnets.1"] = "middle_block.1"
    index = 0
    for b, block in enumerate(getattr(unet, "up_blocks", None) or []):
        attentions = getattr(block, "attentions", None)
        for i in range(len(block.resnets)):
            table[f"up_blocks.{b}.resnets.{i}"] = f"output_blocks.{index}.0"
            if attentions is not None and i < len(attentions):
                table[f"up_blocks.{b}.attentions.{i}"] = f"output_blocks.{index}.1"
            index += 1
        if getattr(block, "upsamplers", None) is not None:
            slot = 2 if attentions is not None else 1
            table[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{index - 1}.{slot}.conv"
    return table


def sgm_name(path: str, blocks: dict[str, str]) -> str | None:
    """The SGM/LDM name of a Diffusers UNet module path, or ``None`` when it has none."""
    if path in _TOP_SGM:
        return _TOP_SGM[path]
    parts = path.split(".")
    for cut in range(len(parts), 1, -1):
        prefix = ".".join(parts[:cut])
        if prefix in blocks:
            rest = parts[cut:]
            if ".resnets." in f".{prefix}." and rest:
                rest = [_RESNET_SGM.get(rest[0], rest[0])] + rest[1:]
            return ".".join([blocks[prefix], *rest])
    return None


class NameTable:
    """Every adaptable module of one model under each name a LoRA file may give it."""

    def __init__(self, model: nn.Module, component: str):
        self.modules = adaptable_modules(model)
        self.component = component
        self._dotted: dict[str, str] = {}
        self._kohya: dict[str, str] = {}
        nested = hasattr(model, "text_model") and isinstance(getattr(model, "text_model"), nn.Module) and model.text_model is not model
        is_text = component.startswith("text_encoder") or hasattr(model, "text_model")
        blocks = _blocks_sgm(model) if hasattr(model, "down_blocks") else {}
        ambiguous: set[str] = set()
        for path in self.modules:
            names = [path]
            if is_text:
                names.append(path[len("text_model."):] if nested and path.startswith("text_model.") else f"text_model.{path}")
            sgm = sgm_name(path, blocks) if blocks else None
            for name in names:
                self._dotted.setdefault(name, path)
            for name in names + ([sgm] if sgm else []):
                flat = name.replace(".", "_")
                if self._kohya.get(flat, path) != path:
                    ambiguous.add(flat)
                self._kohya[flat] = path
        for flat in ambiguous:
            del self._kohya[flat]
        # names of the original model that stand for one or several of ours (Flux's fused projections)
        self._original: dict[str, dict[str, tuple[Target, ...]]] = {"dotted": {}, "kohya": {}}
        for name, targets in original_names(self.modules).items():
            self._original["dotted"][name] = targets
            self._original["kohya"][name.replace(".", "_")] = targets

    def resolve(self, name: str, naming: str) -> str | None:
        """The module path ``name`` means, when it means exactly one whole module."""
        return (self._kohya if naming == "kohya" else self._dotted).get(name)

    def targets(self, name: str, naming: str) -> tuple[Target, ...] | None:
        """The modules ``name`` means: one, or the parts of a fused projection of the original model."""
        path = self.resolve(name, naming)
        if path is not None:
            return (Target(path),)
        return self._original["kohya" if naming == "kohya" else "dotted"].get(name)
