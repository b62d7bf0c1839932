"""The kernel contract suite on what kernel-animatediff registers, with tiny components built from our own classes.

``MotionAdapter`` fits no protocol (it holds weights that ``UNetMotionModel`` loads; it is not run on its
own); its round trips are tested in test_motion_models.py.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

import kernel
from kernel_contracts import DenoiserContract, PipelineContract

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

CONTRACT_COVERS = ["MotionAdapter"]
PROMPTS = ("a cat walks", "the dog", "a red house")


def tiny_motion_unet():
    torch.manual_seed(0)
    return kernel.component("UNetMotionModel")(
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=2, cross_attention_dim=32,
        num_attention_heads=2, motion_num_attention_heads=2, motion_max_seq_length=8,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"))


class TestUNetMotionModelContracts(DenoiserContract):
    component = staticmethod(tiny_motion_unet)

    @staticmethod
    def contract_inputs(model, batch_size, generator):
        return {"sample": torch.randn(batch_size, 4, 3, 8, 8, generator=generator),
                "timestep": torch.tensor([10] * batch_size),
                "encoder_hidden_states": torch.randn(batch_size, 5, 32, generator=generator)}


@functools.lru_cache(maxsize=None)
def _parts() -> dict:
    torch.manual_seed(0)
    unet = kernel.component("UNet2DConditionModel")(**fx.UNET)
    adapter = kernel.component("MotionAdapter")(**fx.ADAPTER)
    vae = kernel.component("AutoencoderKL")(**fx.VAE)
    scheduler = kernel.component("DDIMScheduler")(**fx.SCHED)
    return dict(vae=vae.eval(), unet=unet.eval(), motion_adapter=adapter.eval(), scheduler=scheduler,
                text_encoder=fx.text_encoder(), tokenizer=fx.tokenizer())


def text2video():
    return kernel.component("AnimateDiffPipeline")(**_parts())


def video2video():
    return kernel.component("AnimateDiffVideoToVideoPipeline")(**_parts())


def text_inputs(pipe, batch_size, generator):
    return dict(prompt=[PROMPTS[i % len(PROMPTS)] for i in range(batch_size)], num_frames=3, height=fx.SIZE,
                width=fx.SIZE, num_inference_steps=2, generator=generator)


def video_inputs(pipe, batch_size, generator):
    return dict(prompt=[PROMPTS[i % len(PROMPTS)] for i in range(batch_size)],
                video=[fx.video(frames=3, seed=i) for i in range(batch_size)], height=fx.SIZE, width=fx.SIZE,
                num_inference_steps=2, strength=0.6, generator=generator)


# "pil" is a list (per video) of lists of frames, which the contract's image check does not take; the pil output
# is compared with Diffusers' in test_animatediff_pipeline.py.
OUTPUT_TYPES = ("np", "pt", "latent")
INVALID = [{"num_videos_per_prompt": 0}, {"output_type": "not-an-output-type"}, {"num_frames": 0},
           {"decode_chunk_size": 0}]


class TestAnimateDiffPipelineContracts(PipelineContract):
    component = staticmethod(text2video)
    contract_inputs = staticmethod(text_inputs)
    contract_options = {"invalid_inputs": INVALID, "output_types": OUTPUT_TYPES}


class TestAnimateDiffVideoToVideoPipelineContracts(PipelineContract):
    component = staticmethod(video2video)
    contract_inputs = staticmethod(video_inputs)
    contract_options = {"invalid_inputs": [{"num_videos_per_prompt": 0}, {"strength": 2.0}, {"video": None}],
                        "output_types": OUTPUT_TYPES}
