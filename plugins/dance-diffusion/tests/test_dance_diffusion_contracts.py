"""The kernel contract suite on UNet1DModel (a 1-D signal) and DanceDiffusionPipeline."""

from __future__ import annotations

import pytest
import torch

import kernel
from kernel_contracts import DenoiserContract, PipelineContract

TINY = dict(block_out_channels=(32, 32, 64), extra_in_channels=16, sample_size=64, sample_rate=16000,
            time_embedding_dim=16)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_unet():
    torch.manual_seed(0)
    return kernel.component("UNet1DModel")(**TINY).eval()


class TestUNet1DModel(DenoiserContract):
    component = tiny_unet

    def contract_inputs(self, model, batch_size, generator):
        return {"sample": torch.randn(batch_size, 2, 64, generator=generator),
                "timestep": torch.rand(batch_size, generator=generator)}


def dance_diffusion():
    return kernel.component("DanceDiffusionPipeline")(unet=tiny_unet(), scheduler=kernel.component("IPNDMScheduler")())


class TestDanceDiffusionPipeline(PipelineContract):
    component = dance_diffusion
    contract_options = {"output_types": ("np", "pt"), "invalid_inputs": [{"batch_size": 0}, {"output_type": "pil"},
                                                                         {"audio_length_in_s": 0.0001}]}

    @staticmethod
    def contract_inputs(pipe, batch_size, generator):
        return dict(batch_size=batch_size, num_inference_steps=2, generator=generator)


CONTRACT_COVERS = ["UNet1DModel", "DanceDiffusionPipeline"]
