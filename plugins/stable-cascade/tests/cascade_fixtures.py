"""Tiny Stable Cascade configs (the sizes of Diffusers' own Stable Cascade pipeline tests)."""

from __future__ import annotations

import torch

ATTN = ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock")
NO_ATTN = ("SDCascadeResBlock", "SDCascadeTimestepBlock")

#: Stage C (prior): CLIP text tokens, pooled text and image conditioning; bilinear level switch.
PRIOR = dict(conditioning_dim=128, block_out_channels=(128, 128), num_attention_heads=(2, 2),
             down_num_layers_per_block=(1, 1), up_num_layers_per_block=(1, 1), switch_level=(False,),
             clip_image_in_channels=768, clip_text_in_channels=32, clip_text_pooled_in_channels=32,
             dropout=(0.1, 0.1))

#: Stage B (decoder): effnet and pixel mappers, four levels, repeat mappers, strided level switches.
DECODER = dict(in_channels=4, out_channels=4, conditioning_dim=128, block_out_channels=(16, 32, 32, 32),
               num_attention_heads=(-1, -1, 1, 2), down_num_layers_per_block=(1, 1, 1, 1),
               up_num_layers_per_block=(1, 1, 1, 1), down_blocks_repeat_mappers=(1, 1, 1, 1),
               up_blocks_repeat_mappers=(3, 3, 2, 2), block_types_per_layer=(NO_ATTN, NO_ATTN, ATTN, ATTN),
               clip_text_pooled_in_channels=32, clip_seq=4, effnet_in_channels=16, pixel_mapper_in_channels=3,
               dropout=(0.1, 0.1, 0.1, 0.1), self_attn=True, timestep_conditioning_type=("sca",),
               kernel_size=3, patch_size=1)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (the zero-initialised GRN and mappers would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def prior_inputs(batch: int = 2, seed: int = 0, size: int = 8) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(sample=torch.randn(batch, 16, size, size, generator=g), timestep_ratio=torch.rand(batch, generator=g),
                clip_text_pooled=torch.randn(batch, 1, 32, generator=g), clip_text=torch.randn(batch, 5, 32, generator=g),
                clip_img=torch.randn(batch, 1, 768, generator=g))


def decoder_inputs(batch: int = 2, seed: int = 0, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(sample=torch.randn(batch, 4, size, size, generator=g), timestep_ratio=torch.rand(batch, generator=g),
                clip_text_pooled=torch.randn(batch, 1, 32, generator=g),
                effnet=torch.randn(batch, 16, 6, 6, generator=g))
