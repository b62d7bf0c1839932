"""The single-file families: where each component sits in the file, and how a family is recognised.

A family is one original architecture with a folder of bundled Diffusers configs (``configs/<family>``).
Detection looks at which modules exist (so tiny test models are recognised like real ones) and uses
widths only where the structure is the same (SD 1.x against 2.x for a UNet-only file or a ControlNet, SDXL
base against refiner, the SD3 sizes, FLUX Fill/Depth).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from kernel_single_file import layouts

CONFIGS = Path(__file__).parent / "configs"
UNET_PREFIXES = ("model.diffusion_model.", "")


class Component(NamedTuple):
    layout: Callable
    prefixes: tuple[str, ...]  # where the component may sit in the file; the first is written


UNET = Component(layouts.unet, UNET_PREFIXES)
VAE = Component(layouts.vae, ("first_stage_model.", "vae.", ""))
FLUX_VAE = Component(layouts.vae, ("vae.", "first_stage_model.", ""))
LONE_VAE = Component(layouts.vae, ("", "first_stage_model.", "vae."))  # A1111-style VAE files
SD1_CLIP = Component(layouts.clip, ("cond_stage_model.transformer.",))
SD2_OPENCLIP = Component(layouts.openclip, ("cond_stage_model.model.",))
XL_CLIP = Component(layouts.clip, ("conditioner.embedders.0.transformer.",))
XL_OPENCLIP = Component(layouts.openclip, ("conditioner.embedders.1.model.",))
REFINER_OPENCLIP = Component(layouts.openclip, ("conditioner.embedders.0.model.",))
CLIP_L = Component(layouts.clip, ("text_encoders.clip_l.transformer.",))
CLIP_G = Component(layouts.clip, ("text_encoders.clip_g.transformer.",))
T5XXL = Component(layouts.t5, ("text_encoders.t5xxl.transformer.",))
MMDIT = Component(layouts.mmdit, UNET_PREFIXES)
FLUX = Component(layouts.flux, UNET_PREFIXES)
# lllyasviel's files (``control_v11p_sd15_*``) sit under ControlLDM's ``control_model.``; others (SD 2.1 ones) unprefixed
CONTROLNET = Component(layouts.controlnet, ("control_model.", ""))

_SD1 = {"unet": UNET, "vae": VAE, "text_encoder": SD1_CLIP}
_SD2 = {"unet": UNET, "vae": VAE, "text_encoder": SD2_OPENCLIP}
_XL = {"unet": UNET, "vae": VAE, "text_encoder": XL_CLIP, "text_encoder_2": XL_OPENCLIP}
_SD3 = {"transformer": MMDIT, "vae": VAE, "text_encoder": CLIP_L, "text_encoder_2": CLIP_G, "text_encoder_3": T5XXL}
_FLUX = {"transformer": FLUX, "vae": FLUX_VAE, "text_encoder": CLIP_L, "text_encoder_2": T5XXL}

#: family -> {component name: Component}; the bundled configs live in ``configs/<family>``.
FAMILIES: dict[str, dict[str, Component]] = {
    "sd-v1": _SD1, "sd-v1-inpaint": _SD1, "sd-v2": _SD2, "sd-v2-inpaint": _SD2,
    "sdxl-base": _XL, "sdxl-inpaint": _XL, "sdxl-refiner": {"unet": UNET, "vae": VAE, "text_encoder_2": REFINER_OPENCLIP},
    "sd3-medium": _SD3, "sd3.5-medium": _SD3, "sd3.5-large": _SD3,
    "flux-dev": _FLUX, "flux-schnell": _FLUX,
    "sd-vae": {"vae": LONE_VAE}, "flux-vae": {"vae": LONE_VAE},
    "controlnet-sd-v1": {"controlnet": CONTROLNET}, "controlnet-sd-v2": {"controlnet": CONTROLNET},
    "controlnet-sdxl": {"controlnet": CONTROLNET},
}


def _find(shapes: dict, *keys: str, prefixes: tuple[str, ...] = UNET_PREFIXES) -> tuple | None:
    """The shape of the first of ``keys`` present under one of ``prefixes``."""
    for prefix in prefixes:
        for key in keys:
            if prefix + key in shapes:
                return tuple(shapes[prefix + key])
    return None


def _refuse_non_checkpoints(shapes: dict) -> None:
    keys = list(shapes)
    if any(("lora_" in k or ".lora." in k or k.endswith(".alpha") or k.startswith("lora_")) for k in keys):
        raise ValueError("this file is a LoRA (it has lora_* / .alpha weights), not a model checkpoint; load it with "
                         "pipe.load_lora_weights(path)")
    names = {k.split(".")[0] for k in keys}
    if 0 < len(keys) <= 4 and names <= {"emb_params", "clip_l", "clip_g", "string_to_param", "string_to_token", "name"}:
        raise ValueError("this file is a textual-inversion embedding, not a model checkpoint; load it with "
                         "pipe.load_textual_inversion(path)")


def _controlnet(shapes: dict) -> str | None:
    """A ControlNet alone, in lllyasviel's layout or with Diffusers' names: SDXL's by its size embedding, SD 2.x's
    by 1024-wide cross-attention.  (ControlLDM training checkpoints, which also hold the SD model, are read as SD.)"""
    if _find(shapes, "input_hint_block.0.weight", prefixes=CONTROLNET.prefixes):
        if "model.diffusion_model.input_blocks.0.0.weight" in shapes:
            return None
        adm = _find(shapes, "label_emb.0.0.weight", prefixes=CONTROLNET.prefixes)
        context = _find(shapes, *(f"input_blocks.{i}.1.transformer_blocks.0.attn2.to_k.weight" for i in range(1, 12)),
                        prefixes=CONTROLNET.prefixes)
    elif "controlnet_cond_embedding.conv_in.weight" in shapes and "conv_in.weight" in shapes:
        adm = shapes.get("add_embedding.linear_1.weight")
        context = _find(shapes, *(f"down_blocks.{i}.attentions.0.transformer_blocks.0.attn2.to_k.weight"
                                  for i in range(4)), prefixes=("",))
    else:
        return None
    if adm is not None:
        return "controlnet-sdxl"
    return f"controlnet-sd-v{2 if context is not None and context[1] == 1024 else 1}"


def detect(shapes: dict) -> str | None:
    """The family of a checkpoint from its ``key -> shape`` map (``None``: not one of these layouts)."""
    _refuse_non_checkpoints(shapes)
    controlnet = _controlnet(shapes)
    if controlnet is not None:
        return controlnet
    conv_in = _find(shapes, "input_blocks.0.0.weight")
    if conv_in is not None:
        inpaint = "-inpaint" if conv_in[1] == 9 else ""
        adm = _find(shapes, "label_emb.0.0.weight")
        if adm is not None:  # SDXL: the UNet takes pooled text and size embeddings
            refiner = "conditioner.embedders.0.model.ln_final.weight" in shapes or (
                adm[1] == 2560 and "conditioner.embedders.1.model.ln_final.weight" not in shapes)
            return "sdxl-refiner" if refiner else f"sdxl-{inpaint[1:] or 'base'}"
        context = _find(shapes, *(f"input_blocks.{i}.1.transformer_blocks.0.attn2.to_k.weight" for i in range(1, 12)))
        v2 = "cond_stage_model.model.ln_final.weight" in shapes or (
            "cond_stage_model.transformer.text_model.final_layer_norm.weight" not in shapes and context is not None
            and context[1] == 1024)
        return f"sd-v{2 if v2 else 1}{inpaint}"
    x_embedder = _find(shapes, "x_embedder.proj.weight")
    if x_embedder is not None and _find(shapes, "joint_blocks.0.context_block.adaLN_modulation.1.bias"):
        if x_embedder[0] == 2432:
            return "sd3.5-large"
        return "sd3.5-medium" if _find(shapes, "joint_blocks.0.x_block.attn2.qkv.weight") else "sd3-medium"
    img_in = _find(shapes, "img_in.weight")
    if img_in is not None and _find(shapes, "double_blocks.0.img_attn.qkv.weight"):
        if img_in[1] in (128, 384):
            raise ValueError("this is a FLUX.1 Depth or Fill checkpoint (img_in takes extra channels), which "
                             "kernel-single-file does not convert; FLUX.1 dev and schnell files are supported")
        return "flux-dev" if _find(shapes, "guidance_in.in_layer.weight") else "flux-schnell"
    decoder_in = _find(shapes, "decoder.conv_in.weight", prefixes=VAE.prefixes)
    if decoder_in is not None and _find(shapes, "encoder.conv_in.weight", prefixes=VAE.prefixes):
        return "flux-vae" if decoder_in[1] == 16 else "sd-vae"
    return None
