"""Tiny SD / SDXL pipeline pairs (Diffusers, ours) with a tiny CLIP image encoder, and seeded random IP-Adapter
weights written in the original IP-Adapter layout (``image_proj.*``, ``ip_adapter.<n>.to_k_ip.weight``)."""

from __future__ import annotations

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

VISION = dict(hidden_size=32, intermediate_size=37, projection_dim=24, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8)
CALL = dict(prompt="a photo of a cat", num_inference_steps=2, height=32, width=32, output_type="np")
_CACHE: dict = {}


def image_encoder():
    """A tiny random ``CLIPVisionModelWithProjection`` (built locally, seeded) and its feature extractor."""
    if "encoder" not in _CACHE:
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        torch.manual_seed(7)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)).eval()
        _CACHE["encoder"] = encoder, CLIPImageProcessor(size=VISION["image_size"], crop_size=VISION["image_size"])
    return _CACHE["encoder"]


def pipelines(xl: bool = False, name: str | None = None, with_encoder: bool = True, **extra):
    """(Diffusers pipeline, our pipeline) of the same class with equal weights, sharing the image encoder."""
    theirs, ours = fx.xl_components() if xl else fx.sd_components()
    encoder, extractor = image_encoder() if with_encoder else (None, None)
    for parts in (theirs, ours):
        parts.update(image_encoder=encoder, feature_extractor=extractor, **extra)
    name = name or ("StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline")
    d, o = getattr(diffusers, name)(**theirs), kernel.component(name)(**ours)
    for p in (d, o):
        p.set_progress_bar_config(disable=True)
    return d, o


def cross_attention_layers(unet) -> list[tuple[int, int, int]]:
    """``(layer number, inner width, context width)`` of each cross-attention layer of a Diffusers UNet, numbered
    over all its attention processors as the original IP-Adapter files are."""
    out = []
    names = [k for k in unet.attn_processors if not k.startswith("encoder_hid_proj.")]  # a loaded Plus resampler's
    for n, name in enumerate(names):
        if not name.endswith("attn1.processor"):
            attn = unet.get_submodule(name[: -len(".processor")])
            out.append((n, attn.to_k.out_features, attn.to_k.in_features))
    return out


def _randn(g, *shape, scale=0.3):
    return torch.randn(*shape, generator=g) * scale


def random_ip_adapter(unet, kind: str = "ip", seed: int = 0, tokens: int = 4) -> dict[str, dict[str, torch.Tensor]]:
    """Original-layout IP-Adapter weights (``{"image_proj": {...}, "ip_adapter": {...}}``) for a Diffusers UNet."""
    g = torch.Generator().manual_seed(seed)
    width = unet.config.cross_attention_dim
    embed, hidden = VISION["hidden_size"], 32
    if kind == "ip":
        proj = {"proj.weight": _randn(g, tokens * width, VISION["projection_dim"]), "proj.bias": _randn(g, tokens * width),
                "norm.weight": 1 + _randn(g, width, scale=0.1), "norm.bias": _randn(g, width, scale=0.1)}
    elif kind == "plus":
        proj = {"latents": _randn(g, 1, tokens, hidden, scale=1.0), "proj_in.weight": _randn(g, hidden, embed),
                "proj_in.bias": _randn(g, hidden), "proj_out.weight": _randn(g, width, hidden),
                "proj_out.bias": _randn(g, width), "norm_out.weight": 1 + _randn(g, width, scale=0.1),
                "norm_out.bias": _randn(g, width, scale=0.1)}
        for i in range(4):
            p = f"layers.{i}."
            proj.update({p + "0.norm1.weight": 1 + _randn(g, hidden, scale=0.1), p + "0.norm1.bias": _randn(g, hidden),
                         p + "0.norm2.weight": 1 + _randn(g, hidden, scale=0.1), p + "0.norm2.bias": _randn(g, hidden),
                         p + "0.to_q.weight": _randn(g, 64, hidden), p + "0.to_kv.weight": _randn(g, 128, hidden),
                         p + "0.to_out.weight": _randn(g, hidden, 64), p + "1.0.weight": 1 + _randn(g, hidden, scale=0.1),
                         p + "1.0.bias": _randn(g, hidden), p + "1.1.weight": _randn(g, 4 * hidden, hidden),
                         p + "1.3.weight": _randn(g, hidden, 4 * hidden, scale=0.1)})
    elif kind == "full":
        proj = {"proj.0.weight": _randn(g, embed, embed), "proj.0.bias": _randn(g, embed),
                "proj.2.weight": _randn(g, width, embed), "proj.2.bias": _randn(g, width),
                "proj.3.weight": 1 + _randn(g, width, scale=0.1), "proj.3.bias": _randn(g, width, scale=0.1)}
    else:
        raise ValueError(kind)
    layers = {}
    for n, inner, context in cross_attention_layers(unet):
        layers[f"{n}.to_k_ip.weight"] = _randn(g, inner, context)
        layers[f"{n}.to_v_ip.weight"] = _randn(g, inner, context)
    return {"image_proj": proj, "ip_adapter": layers}


FACE_DIM = 512  # insightface's normed_embedding


def random_faceid(unet, seed: int = 0, plus: bool = False, tokens: int = 4, rank: int = 4,
                  mult: int = 2) -> dict[str, dict[str, torch.Tensor]]:
    """Original-layout IP-Adapter FaceID weights for a Diffusers UNet: the face MLP + norm, ``to_k_ip`` / ``to_v_ip``
    per cross-attention layer and a rank-``rank`` LoRA (q, k, v, out) on every attention layer, as
    ``ip-adapter-faceid_sd15.bin`` holds them; with ``plus`` also the face resampler (``perceiver_resampler.*``, four
    layers of one 64-wide head over the tiny CLIP encoder's hidden states) of ``ip-adapter-faceid-plus(v2)_sd15.bin``.
    Large enough to change the picture."""
    g = torch.Generator().manual_seed(seed + 50)
    width, inner = unet.config.cross_attention_dim, FACE_DIM * mult
    # unit-length faces: proj.0 at scale 1 keeps their differences at order one through the MLP
    proj = {"proj.0.weight": _randn(g, inner, FACE_DIM, scale=1.0), "proj.0.bias": _randn(g, inner, scale=0.1),
            "proj.2.weight": _randn(g, tokens * width, inner, scale=0.1), "proj.2.bias": _randn(g, tokens * width, scale=0.1),
            "norm.weight": 1 + _randn(g, width, scale=0.1), "norm.bias": _randn(g, width, scale=0.1)}
    if plus:  # the resampler works at the token width, so PlusV2's shortcut fits
        hidden, p = VISION["hidden_size"], "perceiver_resampler."
        proj.update({p + "proj_in.weight": _randn(g, width, hidden), p + "proj_in.bias": _randn(g, width),
                     p + "proj_out.weight": _randn(g, width, width), p + "proj_out.bias": _randn(g, width),
                     p + "norm_out.weight": 1 + _randn(g, width, scale=0.1), p + "norm_out.bias": _randn(g, width)})
        for i in range(4):
            q = f"{p}layers.{i}."
            proj.update({q + "0.norm1.weight": 1 + _randn(g, width, scale=0.1), q + "0.norm1.bias": _randn(g, width),
                         q + "0.norm2.weight": 1 + _randn(g, width, scale=0.1), q + "0.norm2.bias": _randn(g, width),
                         q + "0.to_q.weight": _randn(g, 64, width), q + "0.to_kv.weight": _randn(g, 128, width),
                         q + "0.to_out.weight": _randn(g, width, 64), q + "1.0.weight": 1 + _randn(g, width, scale=0.1),
                         q + "1.0.bias": _randn(g, width), q + "1.1.weight": _randn(g, 4 * width, width),
                         q + "1.3.weight": _randn(g, width, 4 * width, scale=0.1)})
    layers = {}
    names = [k for k in unet.attn_processors if not k.startswith("encoder_hid_proj.")]
    for n, name in enumerate(names):
        attn = unet.get_submodule(name[: -len(".processor")])
        for part, linear in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v), ("to_out", attn.to_out[0])):
            layers[f"{n}.{part}_lora.down.weight"] = _randn(g, rank, linear.in_features)
            layers[f"{n}.{part}_lora.up.weight"] = _randn(g, linear.out_features, rank)
    for n, inner_dim, context in cross_attention_layers(unet):
        layers[f"{n}.to_k_ip.weight"] = _randn(g, inner_dim, context)
        layers[f"{n}.to_v_ip.weight"] = _randn(g, inner_dim, context)
    return {"image_proj": proj, "ip_adapter": layers}


def face(seed: int = 0, rows: int = 1, faces: int = 1) -> torch.Tensor:
    """Stand-in face embeddings ``(rows, faces, 1, 512)``, unit length like insightface's ``normed_embedding``."""
    x = torch.randn(rows, faces, 1, FACE_DIM, generator=torch.Generator().manual_seed(seed + 300))
    return x / x.norm(dim=-1, keepdim=True)


def flat(state: dict) -> dict[str, torch.Tensor]:
    """The nested dict as a ``.safetensors`` file stores it (``image_proj.proj.weight`` ...)."""
    return {f"{group}.{k}": v.contiguous() for group, part in state.items() for k, v in part.items()}


def save(state: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(flat(state), str(path))
    else:
        torch.save(state, str(path))
    return path


def run(pipe, seed: int = 0, **call) -> np.ndarray:
    return pipe(generator=fx.gen(seed), **{**CALL, **call}).images


def assert_close(a, b, atol: float = 1e-4) -> None:
    fx.assert_images_close(a, b, atol=atol)


def ip_image(seed: int = 0):
    return fx.image(32, 32, seed=seed + 100)
