"""Tiny SD / SDXL pipeline pairs (Diffusers, ours) and seeded random LoRA weights for the kernel-lora tests.

Each pair has equal weights but its own text encoders, since loading a LoRA changes the modules in place.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sd" / "tests"))
import sd_fixtures as fx  # noqa: E402
from sd_fixtures import single_thread  # noqa: E402,F401

diffusers = pytest.importorskip("diffusers")
import kernel  # noqa: E402
from kernel_clip.testing import tiny_clip_text_model  # noqa: E402

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "time_emb_proj")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
CALL = dict(prompt="a photo of a cat", num_inference_steps=2, height=32, width=32, output_type="np")


def allow_transformers_peft() -> None:
    """Diffusers loads text-encoder LoRA through transformers' peft integration, which asks for a newer peft
    than the one installed; the oracle runs fine with it, so the version check is lifted for the tests."""
    import transformers.integrations.peft as integration

    integration.check_peft_version = lambda *args, **kwargs: None


def pipelines(xl: bool = False, seed: int = 0):
    """(Diffusers pipeline, our pipeline) with the same weights; separate text encoders."""
    allow_transformers_peft()
    if xl:
        theirs, ours = fx.xl_components(seed=seed)
        ours["text_encoder"] = copy.deepcopy(theirs["text_encoder"])
        ours["text_encoder_2"] = copy.deepcopy(theirs["text_encoder_2"])
        names = ("StableDiffusionXLPipeline",) * 2
    else:
        theirs, ours = fx.sd_components(seed=seed)
        te = tiny_clip_text_model(fx.tokenizer("sd1"), seed=seed + 2)
        theirs["text_encoder"], ours["text_encoder"] = te, copy.deepcopy(te)
        names = ("StableDiffusionPipeline",) * 2
    d = getattr(diffusers, names[0])(**theirs)
    o = kernel.component(names[1])(**ours)
    for p in (d, o):
        p.set_progress_bar_config(disable=True)
    return d, o


def random_lora(model: torch.nn.Module, targets=UNET_TARGETS, rank: int = 4, seed: int = 0, strength: float = 0.6):
    """peft-layout LoRA weights (``<layer>.lora_A.weight`` ...) for every ``targets`` layer of ``model``,
    large enough to change the image."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in model.named_modules():
        if not name.endswith(tuple(targets)):
            continue
        if isinstance(module, torch.nn.Linear):
            down, up = (rank, module.in_features), (module.out_features, rank)
        elif isinstance(module, torch.nn.Conv2d):
            down, up = (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
        else:
            continue
        fan_in = int(np.prod(down[1:]))
        out[f"{name}.lora_A.weight"] = torch.randn(down, generator=g) / fan_in**0.5
        out[f"{name}.lora_B.weight"] = torch.randn(up, generator=g) * strength / rank**0.5
    return out


def prefixed(prefix: str, layers: dict) -> dict:
    return {f"{prefix}.{k}": v for k, v in layers.items()}


def to_kohya(layers: dict, prefix: str, alphas: dict | None = None, rename=None) -> dict:
    """peft-layout weights of one component as a kohya-ss state dict (``lora_unet_...``), with ``alpha`` keys."""
    out = {}
    for key, value in layers.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        name = (rename(module) if rename else module).replace(".", "_")
        out[f"{prefix}{name}.lora_down.weight"] = value
        out[f"{prefix}{name}.lora_up.weight"] = layers[f"{module}.lora_B.weight"]
        if alphas is not None:
            out[f"{prefix}{name}.alpha"] = torch.tensor(float(alphas[module]))
    return out


def images(pipe, seed: int = 0, **call):
    return pipe(generator=torch.Generator().manual_seed(seed), **{**CALL, **call}).images


def assert_close(a, b, atol=1e-3):
    np.testing.assert_allclose(a, b, atol=atol, rtol=0)


def tuner_count(pipe) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for c in ("unet", "text_encoder", "text_encoder_2")
               if getattr(pipe, c, None) is not None for m in getattr(pipe, c).modules())
