"""The kernel contract suite on the tiny Stable Cascade UNet (stage B config)."""

from __future__ import annotations

import torch

from cascade_fixtures import DECODER
from kernel_contracts import DenoiserContract, SchedulerContract
from kernel_stable_cascade import StableCascadeUNet

#: The component below is built by a function, which the coverage scan cannot read.
CONTRACT_COVERS = ["StableCascadeUNet", "PaellaVQModel"]  # PaellaVQModel: test_paella_vq_model.py


def tiny_unet():
    torch.manual_seed(0)
    return StableCascadeUNet(**DECODER).eval()


class TestStableCascadeUNet(DenoiserContract):
    component = tiny_unet

    def contract_inputs(self, model, batch_size, generator):
        return {"sample": torch.randn(batch_size, 4, 8, 8, generator=generator),
                "timestep_ratio": torch.rand(batch_size, generator=generator),
                "clip_text_pooled": torch.randn(batch_size, 1, 32, generator=generator),
                "effnet": torch.randn(batch_size, 16, 4, 4, generator=generator)}


class TestDDPMWuerstchenScheduler(SchedulerContract):
    component = "DDPMWuerstchenScheduler"
    # Timesteps are ratios in [0, 1]; set_timesteps(n) gives n + 1 of them (the pipelines evaluate the first n).
    contract_options = {"timestep_range": (0.0, 1.0), "evaluations": lambda n, order: n + 1}
