"""Test helpers for the quantizer plugins: tiny SD UNet, SD3 and Flux transformers, their inputs,
and byte counts.  The models come from the registry, so only the plugins that provide them must be
installed (the tests that use them do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Diffusers class name and constructor arguments of each tiny model (Diffusers accepts the same).
TINY: dict[str, tuple[str, dict[str, Any]]] = {
    "unet": ("UNet2DConditionModel", dict(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32, use_linear_projection=True)),
    "sd3": ("SD3Transformer2DModel", dict(
        sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=32, out_channels=4,
        pos_embed_max_size=16)),
    "flux": ("FluxTransformer2DModel", dict(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True)),
}
MODELS = tuple(TINY)


def tiny_model(kind: str, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """A tiny model of ``kind`` with random weights moved away from zero (so every path shows)."""
    import kernel

    name, config = TINY[kind]
    torch.manual_seed(seed)
    model = kernel.component(name)(**config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def model_inputs(kind: str, batch: int = 1, seed: int = 1, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Keyword inputs for one forward of the tiny ``kind`` model."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    if kind == "unet":
        return dict(sample=rand(batch, 4, 16, 16), timestep=torch.tensor([10] * batch),
                    encoder_hidden_states=rand(batch, 7, 32))
    if kind == "sd3":
        return dict(hidden_states=rand(batch, 4, 8, 8), encoder_hidden_states=rand(batch, 5, 32),
                    pooled_projections=rand(batch, 32), timestep=torch.tensor([500.0] * batch))
    rows, cols, text = 3, 4, 5
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return dict(hidden_states=rand(batch, rows * cols, 8), encoder_hidden_states=rand(batch, text, 32),
                pooled_projections=rand(batch, 32), timestep=torch.tensor([0.5] * batch),
                guidance=torch.full((batch,), 3.5), img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(text, 3))


@torch.no_grad()
def run(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """The model's output tensor for ``inputs`` (first element of tuple/dataclass outputs)."""
    out = model(**inputs)
    if isinstance(out, tuple):
        out = out[0]
    return getattr(out, "sample", out)


def save_tiny(kind: str, folder: str | Path, seed: int = 0) -> Path:
    """Save the tiny ``kind`` model (float32) in Diffusers' layout; returns the folder."""
    tiny_model(kind, seed).save_pretrained(folder)
    return Path(folder)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|."""
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item()


def linear_bytes(model: nn.Module) -> int:
    """Bytes of the parameters of the model's linear layers (quantized ones included)."""
    return sum(p.nelement() * p.element_size() for m in model.modules() if isinstance(m, nn.Linear)
               for p in m.parameters(recurse=False))


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights of the model's linear layers only (no biases)."""
    return sum(m.weight.nelement() * m.weight.element_size() for m in model.modules() if isinstance(m, nn.Linear))


def tiny_sd_pipeline(seed: int = 0):
    """A tiny StableDiffusionPipeline (the tiny UNet, a 2-level VAE, a tiny CLIP text encoder);
    needs kernel-sd, kernel-autoencoders, kernel-unet, kernel-clip and a scheduler plugin."""
    import kernel
    from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer

    torch.manual_seed(seed)
    vae = kernel.component("AutoencoderKL")(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4)
    tokenizer = tiny_clip_tokenizer()
    pipe = kernel.component("StableDiffusionPipeline")(
        unet=tiny_model("unet", seed), vae=vae.eval(), text_encoder=tiny_clip_text_model(tokenizer, seed=seed + 1),
        tokenizer=tokenizer, scheduler=kernel.component("EulerDiscreteScheduler")(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
