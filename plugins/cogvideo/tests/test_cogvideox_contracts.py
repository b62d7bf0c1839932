"""The kernel contract suite on what kernel-cogvideo registers, with tiny components built from our own classes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import kernel
from kernel_contracts import AutoencoderContract, DenoiserContract, PipelineContract, SchedulerContract

sys.path.insert(0, str(Path(__file__).parent))
import cog_fixtures as fx  # noqa: E402
from kernel_cogvideo.autoencoder import cogvideox_decoded_frames  # noqa: E402
from cog_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_transformer():
    torch.manual_seed(0)
    return kernel.component("CogVideoXTransformer3DModel")(**fx.transformer_config("sincos"))


class TestCogVideoXTransformer3DModelContracts(DenoiserContract):
    component = staticmethod(tiny_transformer)
    # frames-first (B, F, C, H, W) in and out, as Diffusers' CogVideoX: channels at dim 2, frames kept
    contract_options = {"channel_dim": 2}

    @staticmethod
    def contract_inputs(model, batch_size, generator):
        return {"hidden_states": torch.randn(batch_size, 3, 4, 8, 8, generator=generator),
                "timestep": torch.tensor([10] * batch_size),
                "encoder_hidden_states": torch.randn(batch_size, 7, 16, generator=generator)}


def tiny_vae():
    torch.manual_seed(0)
    return kernel.component("AutoencoderKLCogVideoX")(**fx.VAE)


class TestAutoencoderKLCogVideoXContracts(AutoencoderContract):
    component = staticmethod(tiny_vae)
    # enable_tiling() without sizes takes tiles of sample_height / 2 = 8 pixels, smaller than the tiny model's
    # three stride-2 stages accept; tiling with workable tiles is compared with Diffusers' in test_cogvideox_vae.py.
    known_failures = {"tiling_within_tolerance": "default tiles of the tiny model are too small to encode"}
    # Latent frames follow the contract's causal rule (1 + (F - 1) // 4); decoding runs in batches of two latent
    # frames, so an even count f gives 4 f frames rather than 1 + 4 (f - 1), as Diffusers' VAE does.
    contract_options = {"decoded_frames": cogvideox_decoded_frames}

    @staticmethod
    def contract_inputs(model, batch_size, generator):
        return {"x": torch.rand(batch_size, 3, 5, 16, 16, generator=generator) * 2 - 1}


class TestCogVideoXDDIMSchedulerContracts(SchedulerContract):
    component = "CogVideoXDDIMScheduler"


class TestCogVideoXDPMSchedulerContracts(SchedulerContract):
    # the contracts that call step(model_output, timestep, sample) are declared by the class itself
    # (_known_contract_failures): its step takes the reference's multistep arguments
    component = "CogVideoXDPMScheduler"


def tiny_pipeline():
    ours, _ = fx.pipeline_parts(use_rotary_positional_embeddings=True)
    return kernel.component("CogVideoXPipeline")(**ours)


def pipeline_inputs(pipe, batch_size, generator):
    prompts = ("a cat", "the dog", "a photo")
    return dict(prompt=[prompts[i % 3] for i in range(batch_size)], num_frames=8, height=fx.SIZE, width=fx.SIZE,
                num_inference_steps=2, max_sequence_length=16, generator=generator)


class TestCogVideoXPipelineContracts(PipelineContract):
    component = staticmethod(tiny_pipeline)
    contract_inputs = staticmethod(pipeline_inputs)
    # "pil" is a list (per video) of frame lists, which the contract's image check does not take; it is
    # tested in test_cogvideox_pipeline.py.
    contract_options = {"invalid_inputs": [{"num_videos_per_prompt": 0}, {"output_type": "not-an-output-type"},
                                           {"num_frames": 0}, {"height": 12},
                                           {"num_frames": 6}],
                        "output_types": ("np", "pt", "latent")}


def tiny_video2video():
    ours, _ = fx.pipeline_parts(use_rotary_positional_embeddings=True)
    return kernel.component("CogVideoXVideoToVideoPipeline")(**ours)


def video_inputs(pipe, batch_size, generator):
    prompts = ("a cat", "the dog", "a photo")
    return dict(video=fx.video(frames=8), prompt=[prompts[i % 3] for i in range(batch_size)], height=fx.SIZE,
                width=fx.SIZE, num_inference_steps=2, strength=0.6, max_sequence_length=16, generator=generator)


class TestCogVideoXVideoToVideoPipelineContracts(PipelineContract):
    component = staticmethod(tiny_video2video)
    contract_inputs = staticmethod(video_inputs)
    contract_options = {"invalid_inputs": [{"num_videos_per_prompt": 0}, {"strength": 2.0}, {"video": None},
                                           {"video": []}, {"video": fx.video(frames=6)}],
                        "output_types": ("np", "pt", "latent")}


def tiny_image2video():
    ours, _ = fx.pipeline_parts(use_rotary_positional_embeddings=True, in_channels=8)
    return kernel.component("CogVideoXImageToVideoPipeline")(**ours)


def image_inputs(pipe, batch_size, generator):
    prompts = ("a cat", "the dog", "a photo")
    return dict(image=fx.video(frames=1)[0], prompt=[prompts[i % 3] for i in range(batch_size)], num_frames=8,
                height=fx.SIZE, width=fx.SIZE, num_inference_steps=2, max_sequence_length=16, generator=generator)


class TestCogVideoXImageToVideoPipelineContracts(PipelineContract):
    component = staticmethod(tiny_image2video)
    contract_inputs = staticmethod(image_inputs)
    contract_options = {"invalid_inputs": [{"num_videos_per_prompt": 0}, {"image": None}, {"num_frames": 0},
                                           {"num_frames": 12}],
                        "output_types": ("np", "pt", "latent")}


def tiny_fun_control():
    ours, _ = fx.pipeline_parts(use_rotary_positional_embeddings=True, in_channels=8)
    return kernel.component("CogVideoXFunControlPipeline")(**ours)


def control_inputs(pipe, batch_size, generator):
    prompts = ("a cat", "the dog", "a photo")
    return dict(control_video=fx.video(frames=8), prompt=[prompts[i % 3] for i in range(batch_size)], height=fx.SIZE,
                width=fx.SIZE, num_inference_steps=2, max_sequence_length=16, generator=generator)


class TestCogVideoXFunControlPipelineContracts(PipelineContract):
    component = staticmethod(tiny_fun_control)
    contract_inputs = staticmethod(control_inputs)
    contract_options = {"invalid_inputs": [{"num_videos_per_prompt": 0}, {"control_video": None}, {"height": 12}],
                        "output_types": ("np", "pt", "latent")}
