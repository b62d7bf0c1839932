"""IP-Adapter scales per UNet block (InstantStyle, Wang et al. 2024, arXiv:2404.02733).

A scale is a number for every layer, a list of per-image numbers (with region masks), or a dict naming
blocks of the UNet as Diffusers' ``set_ip_adapter_scale`` does::

    {"down": {"block_2": [0.0, 1.0]}, "mid": 0.0, "up": {"block_0": [0.0, 1.0, 0.0]}}

``"down"`` / ``"up"`` take a number (every block) or ``{"block_<i>": number or one number per
transformer of the block}``; ``"mid"`` a number.  Blocks and parts left out get 0.  The result maps
module-name prefixes (``"down_blocks.2.attentions.1"``, ``"mid_block.attentions.0"``) to scales.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

from torch import nn


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"IP-Adapter scale {where} must be a number, got {value!r}")
    return float(value)


def check_scale(value: Any, where: str = "") -> float | list[float] | dict:
    """A number, a list of numbers (per masked image) or a per-block dict (checked later against the UNet)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"IP-Adapter scale {where} is an empty list")
        return [_number(v, where) for v in value]
    return _number(value, where)


def _stages(unet: nn.Module) -> dict[str, list[tuple[int, int]]]:
    """``{"down": [(block index, transformers in it)], "up": [...]}`` for blocks with attention."""
    out = {}
    for part, blocks in (("down", unet.down_blocks), ("up", unet.up_blocks)):
        out[part] = [(i, len(b.attentions)) for i, b in enumerate(blocks) if len(getattr(b, "attentions", None) or ())]
    return out


def expand_block_scales(unet: nn.Module, config: dict, default: float = 0.0) -> dict[str, float]:
    """A per-block dict -> ``{module prefix: scale}`` covering every transformer of ``unet``."""
    unknown = sorted(set(config) - {"down", "mid", "up"})
    if unknown:
        raise ValueError(f"IP-Adapter scale dict keys must be 'down', 'mid' or 'up', got {unknown}")
    out: dict[str, float] = {}
    mid = config.get("mid", default)
    if isinstance(mid, (list, tuple)):
        if len(mid) != 1:
            raise ValueError(f"IP-Adapter scale for 'mid' takes one number, got {len(mid)}")
        mid = mid[0]
    if getattr(unet, "mid_block", None) is not None and len(getattr(unet.mid_block, "attentions", None) or ()):
        out["mid_block.attentions.0"] = _number(mid, "for 'mid'")
    elif "mid" in config:
        raise ValueError("IP-Adapter scale names 'mid' but this UNet's mid block has no attention")
    for part, blocks in _stages(unet).items():
        value = config.get(part, default)
        if not isinstance(value, dict):
            value = {f"block_{i}": value for i, _ in blocks}
        present = {f"block_{i}": n for i, n in blocks}
        wrong = sorted(set(value) - set(present))
        if wrong:
            raise ValueError(f"IP-Adapter scale for {part!r} names {wrong}, but the {part} blocks with attention are "
                             f"{sorted(present)}")
        for i, n in blocks:
            block = value.get(f"block_{i}", default)
            if not isinstance(block, (list, tuple)):
                block = [block] * n
            elif len(block) == 1:
                block = list(block) * n
            elif len(block) != n:
                raise ValueError(f"IP-Adapter scale for {part}.block_{i} has {len(block)} values; the block has {n} "
                                 "transformers (give one number, or one per transformer)")
            for j, s in enumerate(block):
                out[f"{part}_blocks.{i}.attentions.{j}"] = _number(s, f"for {part}.block_{i}")
    return out
