"""The kernel contract suite on AutoencoderOobleck (1-D audio), StableAudioDiTModel and StableAudioPipeline.

StableAudioProjectionModel declares no component kind (it is neither a denoiser nor a prompt
conditioner on its own); it is exercised through the pipeline contract and by test_models.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import kernel
from kernel_contracts import AutoencoderContract, DenoiserContract, PipelineContract

sys.path.insert(0, str(Path(__file__).parent))
from sa_fixtures import DIT, OOBLECK, PROJECTION, _text_parts, randomize  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_vae():
    torch.manual_seed(0)
    return randomize(kernel.component("AutoencoderOobleck")(**OOBLECK))


def tiny_dit():
    torch.manual_seed(0)
    return kernel.component("StableAudioDiTModel")(**DIT).eval()


class TestAutoencoderOobleck(AutoencoderContract):
    component = tiny_vae

    def contract_inputs(self, model, batch_size, generator):
        return {"x": torch.rand(batch_size, 2, 32, generator=generator) * 2 - 1}


class TestStableAudioDiTModel(DenoiserContract):
    component = tiny_dit

    def contract_inputs(self, model, batch_size, generator):
        return {"hidden_states": torch.randn(batch_size, 4, 16, generator=generator),
                "timestep": torch.rand(batch_size, generator=generator),
                "encoder_hidden_states": torch.randn(batch_size, 5, 16, generator=generator),
                "global_hidden_states": torch.randn(batch_size, 1, 32, generator=generator)}


def stable_audio():
    tokenizer, text_encoder = _text_parts()
    torch.manual_seed(0)
    projection = kernel.component("StableAudioProjectionModel")(**PROJECTION).eval()
    return kernel.component("StableAudioPipeline")(
        vae=tiny_vae(), text_encoder=text_encoder, projection_model=projection, tokenizer=tokenizer,
        transformer=tiny_dit(), scheduler=kernel.component("CosineDPMSolverMultistepScheduler")())


class TestStableAudioPipeline(PipelineContract):
    component = stable_audio
    contract_options = {"output_types": ("pt", "np"),
                        "invalid_inputs": [{"num_waveforms_per_prompt": 0}, {"output_type": "pil"},
                                           {"audio_end_in_s": 5.0}, {"audio_start_in_s": 0.5, "audio_end_in_s": 0.5}]}

    @staticmethod
    def contract_inputs(pipe, batch_size, generator):
        return dict(prompt=["a cat"] * batch_size, num_inference_steps=2, generator=generator)


CONTRACT_COVERS = ["AutoencoderOobleck", "StableAudioDiTModel", "StableAudioProjectionModel", "StableAudioPipeline"]
