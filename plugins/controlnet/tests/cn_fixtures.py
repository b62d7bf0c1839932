"""Tiny ControlNets for the kernel-controlnet tests, on top of kernel-sd's tiny SD / SDXL components.

A fresh ControlNet's output convolutions are zero, so it changes nothing and a parity test with it
would prove nothing: every builder here randomises them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sd" / "tests"))
import sd_fixtures as fx  # noqa: E402,F401  (re-exported for the tests)
from sd_fixtures import single_thread  # noqa: E402,F401

# Matches fx.SD_UNET / fx.XL_UNET; the tiny VAE halves the size once, so the control-image encoder
# (conditioning_embedding_out_channels) downsamples once too.
SD_CN = dict(block_out_channels=(4, 8), layers_per_block=1, in_channels=4,
             down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=32, norm_num_groups=2,
             conditioning_embedding_out_channels=(4, 8))
XL_CN = dict(SD_CN, attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
             addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
             cross_attention_dim=64, norm_num_groups=1)
#: SDXL ControlNet-Union: the control tokens are block_out_channels[0] (4) wide.
XL_UNION = dict(XL_CN, num_control_type=6, num_trans_channel=4, num_trans_head=2, num_proj_channel=4)
ZERO_INIT = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out", "spatial_ch_projs")


def randomise_zero_convs(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Give the zero-initialised output convolutions random weights (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(ZERO_INIT):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def controlnet(seed: int = 5, xl: bool = False, **over):
    """(Diffusers' ControlNetModel, ours) with the same random weights, output convs included."""
    import diffusers

    torch.manual_seed(seed)
    theirs = randomise_zero_convs(diffusers.ControlNetModel(**{**(XL_CN if xl else SD_CN), **over}).eval(), seed)
    return theirs, fx.ours_of(theirs)


def our_controlnet(seed: int = 5, xl: bool = False, **over):
    """Ours alone (no Diffusers), for the contract tests."""
    import kernel

    torch.manual_seed(seed)
    model = kernel.component("ControlNetModel")(**{**(XL_CN if xl else SD_CN), **over})
    return randomise_zero_convs(model, seed).eval()


def _stronger_tokens(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Union nets: more weight on the control-token path (attention, projection), so its effects show."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("transformer_layes", "spatial_ch_projs")):
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def union_controlnet(seed: int = 5, **over):
    """(Diffusers' ControlNetUnionModel, ours) with the same random weights, zero-initialised layers included."""
    import diffusers

    torch.manual_seed(seed)
    theirs = diffusers.ControlNetUnionModel(**{**XL_UNION, **over}).eval()
    theirs = _stronger_tokens(randomise_zero_convs(theirs, seed), seed)
    return theirs, fx.ours_of(theirs)


def our_union_controlnet(seed: int = 5, **over):
    """Ours alone (no Diffusers), for the contract tests."""
    import kernel

    torch.manual_seed(seed)
    model = kernel.component("ControlNetUnionModel")(**{**XL_UNION, **over})
    return _stronger_tokens(randomise_zero_convs(model, seed), seed).eval()


def control_image(size: int = 32, seed: int = 7):
    return fx.image(size, size, seed=seed)
