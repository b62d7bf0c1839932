"""Tiny T2I-Adapters and UNets they fit, on top of kernel-sd's tiny SD / SDXL components.

The tiny VAE halves the image once (32 px -> 16 latents).  An adapter's features must land on the UNet's
down stages, so the UNets here are laid out like the real ones the adapters were made for:

* SD: a cross-attention stage (features added inside it, before its downsampler, at 16x16) then a plain
  final stage (added after it, at 8x8); the full adapter (factor 2) gives 4 channels at 16x16, 8 at 8x8.
* SDXL: a plain stage with a downsampler (added after it, 8x8), two cross-attention stages (8x8, then 4x4)
  and the mid block (4x4); the XL adapter (factor 4) gives 4 and 8 channels at 8x8, then 8 and 8 at 4x4.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sd" / "tests"))
import sd_fixtures as fx  # noqa: E402,F401  (re-exported for the tests)
from sd_fixtures import single_thread  # noqa: E402,F401

SD_UNET_OVER = dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 2))
XL_UNET_OVER = dict(block_out_channels=(4, 8, 8), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                    "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=(2, 4, 4), transformer_layers_per_block=(1, 1, 2))

ADAPTERS = {  # adapter_type: config for the tiny UNets above
    "full_adapter": dict(in_channels=3, channels=[4, 8], num_res_blocks=2, downscale_factor=2,
                         adapter_type="full_adapter"),
    "light_adapter": dict(in_channels=3, channels=[4, 8], num_res_blocks=2, downscale_factor=2,
                          adapter_type="light_adapter"),
    "full_adapter_xl": dict(in_channels=3, channels=[4, 8, 8, 8], num_res_blocks=2, downscale_factor=4,
                            adapter_type="full_adapter_xl"),
}


def adapter(kind: str = "full_adapter", seed: int = 3, **over):
    """(Diffusers' T2IAdapter, ours) with the same random weights."""
    import diffusers

    torch.manual_seed(seed)
    theirs = diffusers.T2IAdapter(**{**ADAPTERS[kind], **over}).eval()
    return theirs, fx.ours_of(theirs)


def our_adapter(kind: str = "full_adapter", seed: int = 3, **over):
    """Ours alone (no Diffusers), for the contract tests."""
    import kernel

    torch.manual_seed(seed)
    return kernel.component("T2IAdapter")(**{**ADAPTERS[kind], **over}).eval()


def control_image(size: int = 32, seed: int = 7):
    return fx.image(size, size, seed=seed)
