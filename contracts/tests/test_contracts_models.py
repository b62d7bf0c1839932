"""The model contracts on the project's own tiny models (UNets, AutoencoderKL)."""

from __future__ import annotations

import torch

import kernel
from kernel_contracts import AutoencoderContract, DenoiserContract


def tiny_unet():
    torch.manual_seed(0)
    return kernel.component("UNet2DModel")(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=4,
    )


def tiny_cond_unet():
    torch.manual_seed(0)
    return kernel.component("UNet2DConditionModel")(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12, norm_num_groups=4, attention_head_dim=4,
    )


def tiny_vae():
    torch.manual_seed(0)
    return kernel.component("AutoencoderKL")(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=4, sample_size=16,
    )


class TestUNet2DModelContracts(DenoiserContract):
    component = tiny_unet

    def contract_inputs(self, model, batch_size, generator):
        return {"sample": torch.randn(batch_size, 3, 8, 8, generator=generator), "timestep": torch.tensor([10] * batch_size)}


class TestUNet2DConditionModelContracts(DenoiserContract):
    component = tiny_cond_unet

    def contract_inputs(self, model, batch_size, generator):
        return {
            "sample": torch.randn(batch_size, 4, 8, 8, generator=generator),
            "timestep": torch.tensor([10] * batch_size),
            "encoder_hidden_states": torch.randn(batch_size, 5, 12, generator=generator),
        }


class TestAutoencoderKLContracts(AutoencoderContract):
    component = tiny_vae

    def contract_inputs(self, model, batch_size, generator):
        return {"x": torch.rand(batch_size, 3, 16, 16, generator=generator) * 2 - 1}
