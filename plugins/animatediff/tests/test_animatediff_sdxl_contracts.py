"""The kernel's pipeline contract on AnimateDiffSDXLPipeline, with tiny components built from our own classes
(an SDXL UNet with the text_time embedding and a three-stage SDXL motion adapter without a mid-block module)."""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import kernel
from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer
from kernel_contracts import PipelineContract

sys.path.insert(0, str(Path(__file__).parent))
import ad_fixtures as fx  # noqa: E402
from ad_fixtures import single_thread  # noqa: E402,F401
from test_animatediff_sdxl import XL_ADAPTER, XL_UNET  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ("a cat walks", "the dog", "a red house")


@functools.lru_cache(maxsize=None)
def _parts() -> dict:
    torch.manual_seed(0)
    unet = kernel.component("UNet2DConditionModel")(**XL_UNET)
    adapter = kernel.component("MotionAdapter")(**XL_ADAPTER)
    vae = kernel.component("AutoencoderKL")(**fx.VAE)
    scheduler = kernel.component("DDIMScheduler")(**fx.SCHED)
    tok = tiny_clip_tokenizer(tempfile.mkdtemp(prefix="tok-adxlc-1-"))
    tok2 = tiny_clip_tokenizer(tempfile.mkdtemp(prefix="tok-adxlc-2-"), pad_token="!")
    return dict(vae=vae.eval(), unet=unet.eval(), motion_adapter=adapter.eval(), scheduler=scheduler,
                text_encoder=tiny_clip_text_model(tok, seed=1), tokenizer=tok,
                text_encoder_2=tiny_clip_text_model(tok2, seed=2, with_projection=True), tokenizer_2=tok2)


def sdxl_text2video():
    return kernel.component("AnimateDiffSDXLPipeline")(**_parts())


def text_inputs(pipe, batch_size, generator):
    return dict(prompt=[PROMPTS[i % len(PROMPTS)] for i in range(batch_size)], num_frames=3, height=fx.SIZE,
                width=fx.SIZE, num_inference_steps=2, generator=generator)


class TestAnimateDiffSDXLPipelineContracts(PipelineContract):
    component = staticmethod(sdxl_text2video)
    contract_inputs = staticmethod(text_inputs)
    contract_options = {"invalid_inputs": [{"num_videos_per_prompt": 0}, {"output_type": "not-an-output-type"},
                                           {"num_frames": 0}, {"decode_chunk_size": 0}],
                        "output_types": ("np", "pt", "latent")}
