"""The model contracts on the project's own tiny models (UNets, AutoencoderKL)."""

from __future__ import annotations

import pytest
import torch

import kernel
import kernel_contracts
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


def vae_inputs(model, batch_size, generator):
    return {"x": torch.rand(batch_size, 3, 16, 16, generator=generator) * 2 - 1}


class TestAutoencoderKLContracts(AutoencoderContract):
    component = tiny_vae

    def contract_inputs(self, model, batch_size, generator):
        return vae_inputs(model, batch_size, generator)


@pytest.mark.parametrize("latent_space", [
    {"scaling_factor": 0.13025},
    {"scaling_factor": 1.5305, "shift_factor": 0.0609},
    {"scaling_factor": 0.5, "latents_mean": [0.1, -0.2, 0.3, 0.0], "latents_std": [1.5, 0.5, 2.0, 1.0]},
])
def test_latent_normalization_contract_holds_for_each_convention(latent_space):
    """The round-trip contract on every latent-space convention the autoencoders read from their config."""
    def factory():
        vae = tiny_vae()
        return type(vae).from_config(vae.config, **latent_space)

    assert kernel_contracts.check(factory, contracts=["latent_normalization_round_trip"], contract_inputs=vae_inputs) == []
    vae = factory()
    z = torch.randn(2, 4, 4, 4)
    assert not torch.allclose(vae.normalize_latents(z), z)  # the convention is applied, not skipped
