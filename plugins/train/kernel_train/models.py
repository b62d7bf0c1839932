"""Loading the components of a Stable-Diffusion-layout folder for training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def read_index(folder: str | Path) -> dict:
    path = Path(folder) / "model_index.json"
    if not path.is_file():
        raise FileNotFoundError(f"--pretrained_model_name_or_path {str(folder)!r} has no model_index.json")
    return json.loads(path.read_text(encoding="utf-8"))


def component_class(index: dict, name: str):
    from kernel.pipeline import resolve_class

    entry = index.get(name)
    if not isinstance(entry, (list, tuple)) or entry[0] is None:
        raise ValueError(f"model_index.json has no component {name!r}")
    return resolve_class(entry[0], entry[1], component=name)


def load_component(folder: str | Path, index: dict, name: str, from_config: bool = False, seed: int = 0) -> Any:
    """Load component ``name``; with ``from_config`` build it from its config with fresh weights."""
    cls = component_class(index, name)
    sub = Path(folder) / name
    is_transformers = index[name][0] == "transformers"
    if not from_config:
        return cls.from_pretrained(str(sub)) if is_transformers else cls.from_pretrained(str(folder), subfolder=name)
    torch.manual_seed(seed)
    if is_transformers:
        config_cls = cls.config_class
        return cls(config_cls.from_pretrained(str(sub)))
    config = json.loads((sub / "config.json").read_text(encoding="utf-8"))
    return cls.from_config(config)


def noise_table(folder: str | Path) -> tuple[torch.Tensor, dict]:
    """``alphas_cumprod`` of the folder's scheduler config (the forward process used in training)."""
    from kernel_sched_common import make_betas, rescale_zero_terminal_snr

    config = json.loads((Path(folder) / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    betas = make_betas(config.get("num_train_timesteps", 1000), config.get("beta_start", 0.0001),
                       config.get("beta_end", 0.02), config.get("beta_schedule", "linear"),
                       config.get("trained_betas"))
    if config.get("rescale_betas_zero_snr", False):
        betas = rescale_zero_terminal_snr(betas)
    return torch.cumprod(1.0 - betas, dim=0), config
