"""Single file -> Diffusers folder, and Diffusers folder -> single file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from kernel_single_file.convert import to_original
from kernel_single_file.families import FAMILIES

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def to_diffusers_folder(source: str | os.PathLike, out: str | os.PathLike, config: str | os.PathLike | None = None,
                        torch_dtype: torch.dtype | None = None, **overrides: Any) -> Path:
    """Write the Diffusers folder of a single-file checkpoint (a pipeline, or the one model a VAE-only or
    transformer-only file holds when ``config`` is not a pipeline folder).  Components the file lacks
    (tokenizers, a text encoder) come from ``config`` or ``overrides``, as with ``from_single_file``."""
    from kernel.checkpoints import Checkpoint, config_folder, detect, load_pipeline
    from kernel.pipeline import DiffusionPipeline, resolve_class

    family = detect(Checkpoint(source))
    index = json.loads((config_folder(family) / "model_index.json").read_text())
    if "_class_name" not in index:  # one model (a standalone VAE)
        (name, entry), = ((k, v) for k, v in index.items() if isinstance(v, list))
        model = resolve_class(*entry, component=name).from_single_file(source, config=config, torch_dtype=torch_dtype)
        model.save_pretrained(out)
    else:
        load_pipeline(DiffusionPipeline, source, config=config, torch_dtype=torch_dtype, **overrides).save_pretrained(out)
    return Path(out)


def family_of(folder: Path) -> str:
    """The single-file family a Diffusers folder is written as (its layout)."""
    def config(name: str) -> dict:
        file = folder / name / "config.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    if (folder / "config.json").is_file():  # one model folder: a VAE or a ControlNet
        model = json.loads((folder / "config.json").read_text())
        if model.get("_class_name") == "ControlNetModel":
            if model.get("addition_embed_type") == "text_time":
                return "controlnet-sdxl"
            v2 = model.get("use_linear_projection") or model.get("cross_attention_dim") == 1024
            return f"controlnet-sd-v{2 if v2 else 1}"
        if model.get("_class_name", "AutoencoderKL") == "AutoencoderKL":
            return "flux-vae" if model.get("latent_channels") == 16 else "sd-vae"
        raise ValueError(f"{folder} holds a {model['_class_name']}; single files are written for SD 1.x/2.x, SDXL, "
                         "SD3 and FLUX.1 folders, AutoencoderKL and ControlNetModel folders (or give family=)")
    index = json.loads((folder / "model_index.json").read_text())
    name = str(index.get("_class_name"))
    unet = config("unet")
    if name.startswith("StableDiffusion3"):
        return "sd3-medium"
    if name.startswith("Flux"):
        return "flux-dev" if config("transformer").get("guidance_embeds") else "flux-schnell"
    if "XL" in name:
        if (index.get("text_encoder") or [None])[0] is None:
            return "sdxl-refiner"
        return "sdxl-inpaint" if unet.get("in_channels") == 9 else "sdxl-base"
    if name.startswith("StableDiffusion"):
        v2 = unet.get("use_linear_projection") or unet.get("cross_attention_dim") == 1024
        return f"sd-v{2 if v2 else 1}" + ("-inpaint" if unet.get("in_channels") == 9 else "")
    raise ValueError(f"{folder} holds a {name}; single files are written for SD 1.x/2.x, SDXL, SD3 and FLUX.1 "
                     "folders, AutoencoderKL and ControlNetModel folders (or give family=)")


def to_single_file(folder: str | os.PathLike, out: str | os.PathLike, family: str | None = None,
                   components: list[str] | None = None, dtype: torch.dtype | str | None = None) -> Path:
    """Write a Diffusers folder (or a VAE or ControlNet model folder) as one original-layout ``.safetensors`` file.

    ``family`` picks the layout (default: read from the folder); ``components`` limits what is written
    (``["unet"]`` for a UNet-only file); ``dtype`` (``torch.float16`` or ``"fp16"``) casts floating weights."""
    from safetensors.torch import save_file

    from kernel.io import atomic_path
    from kernel.modeling import read_state_dict, weight_files

    folder = Path(folder)
    family = family or family_of(folder)
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not one of {sorted(FAMILIES)}")
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or a torch.dtype, got {dtype!r}")
    single_model = (folder / "config.json").is_file()
    names = components or [n for n in FAMILIES[family] if single_model or (folder / n / "config.json").is_file()]
    states, configs = {}, {}
    for name in names:
        sub = folder if single_model else folder / name
        if not (sub / "config.json").is_file():
            raise ValueError(f"{folder} has no {name} (no {sub / 'config.json'})")
        stem = "diffusion_pytorch_model" if any(sub.glob("diffusion_pytorch_model*")) else "model"
        states[name] = read_state_dict(weight_files(sub, None, None, stem=stem), dtype=dtype)
        configs[name] = json.loads((sub / "config.json").read_text())
    state = to_original(family, states, configs)
    out = Path(out)
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "family": family})
    return out
