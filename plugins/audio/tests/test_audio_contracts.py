"""The kernel contract suite on the kernel-audio pipelines, with tiny components."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import kernel
from kernel_contracts import PipelineContract

sys.path.insert(0, str(Path(__file__).parent))
import audio_fixtures as fx  # noqa: E402
from audio_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")
PROMPTS = (fx.PROMPT, "a dog barking", "rain on a roof")


def audioldm():
    return kernel.component("AudioLDMPipeline")(**fx.audioldm_components()[1])


def musicldm():
    return kernel.component("MusicLDMPipeline")(**fx.musicldm_components()[1])


def inputs(pipe, batch_size, generator):
    return dict(prompt=[PROMPTS[i % len(PROMPTS)] for i in range(batch_size)], num_inference_steps=2,
                generator=generator)


OPTIONS = {"output_types": ("np", "pt", "latent"),
           "invalid_inputs": [{"num_waveforms_per_prompt": 0}, {"output_type": "pil"},
                              {"audio_length_in_s": 0.0001}]}


class TestAudioLDMPipelineContracts(PipelineContract):
    component = audioldm
    contract_inputs = staticmethod(inputs)
    contract_options = OPTIONS


class TestMusicLDMPipelineContracts(PipelineContract):
    component = musicldm
    contract_inputs = staticmethod(inputs)
    contract_options = OPTIONS
