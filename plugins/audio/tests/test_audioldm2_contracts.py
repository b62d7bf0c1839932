"""The kernel contract suite on AudioLDM2UNet2DConditionModel and AudioLDM2Pipeline, with tiny components.

AudioLDM2ProjectionModel declares no component kind (it only reshapes the two text encoders' states
for GPT-2); it is exercised through the pipeline contract and by test_audioldm2.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import kernel
from kernel_contracts import DenoiserContract, PipelineContract

sys.path.insert(0, str(Path(__file__).parent))
import aldm2_fixtures as af  # noqa: E402
import audio_fixtures as fx  # noqa: E402
from audio_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")
PROMPTS = (fx.PROMPT, "a dog barking", "rain on a roof")


def tiny_unet():
    torch.manual_seed(0)
    return kernel.component("AudioLDM2UNet2DConditionModel")(**af.UNET).eval()


class TestAudioLDM2UNet2DConditionModel(DenoiserContract):
    component = tiny_unet

    def contract_inputs(self, model, batch_size, generator):
        mask = torch.ones(batch_size, 6, dtype=torch.long)
        mask[:, 4:] = 0
        return {"sample": torch.randn(batch_size, 4, 8, 4, generator=generator),
                "timestep": torch.tensor(10),
                "encoder_hidden_states": torch.randn(batch_size, 8, 16, generator=generator),
                "encoder_hidden_states_1": torch.randn(batch_size, 6, 32, generator=generator),
                "encoder_attention_mask_1": mask}


def audioldm2():
    return kernel.component("AudioLDM2Pipeline")(**af.components()[1])


def inputs(pipe, batch_size, generator):
    return dict(prompt=[PROMPTS[i % len(PROMPTS)] for i in range(batch_size)], num_inference_steps=2,
                generator=generator)


class TestAudioLDM2PipelineContracts(PipelineContract):
    component = audioldm2
    contract_inputs = staticmethod(inputs)
    contract_options = {"output_types": ("np", "pt", "latent"),
                        "invalid_inputs": [{"num_waveforms_per_prompt": 0}, {"output_type": "pil"},
                                           {"audio_length_in_s": 0.0001}, {"max_new_tokens": 0}]}


CONTRACT_COVERS = ["AudioLDM2UNet2DConditionModel", "AudioLDM2ProjectionModel", "AudioLDM2Pipeline"]
