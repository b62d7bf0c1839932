"""The kernel contract suite on every kernel-sd pipeline, with tiny components built from our own classes.

The task auto-pipelines are factories (``from_pretrained``/``from_pipe`` pick the family's class
for the task), so their contracts run on what ``AutoPipelineFor<Task>.from_pipe(pipe)`` returns
for a pipeline of another task.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

import kernel
from kernel_clip.testing import tiny_clip_text_model
from kernel_contracts import PipelineContract

sys.path.insert(0, str(Path(__file__).parent))
import sd_fixtures as fx  # noqa: E402
from sd_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ("a photo of a cat", "the dog", "a red house")
SIZE = 32  # pixels; the tiny VAE halves it once, the UNets take 16x16 latents


@functools.lru_cache(maxsize=None)
def _parts(xl: bool = False) -> dict:
    """Tiny seeded components (ours), shared by every pipeline of the family."""
    torch.manual_seed(0)
    unet = kernel.component("UNet2DConditionModel")(**(fx.XL_UNET if xl else fx.SD_UNET))
    vae = kernel.component("AutoencoderKL")(**fx.VAE)
    scheduler = kernel.component("EulerDiscreteScheduler")(**fx.SCHED)
    tok = fx.tokenizer("sd1")
    te = tiny_clip_text_model(tok, seed=2, num_hidden_layers=2)
    parts = dict(vae=vae.eval(), unet=unet.eval(), scheduler=scheduler, text_encoder=te, tokenizer=tok)
    if xl:
        tok_2 = fx.tokenizer("sd2")
        parts.update(tokenizer_2=tok_2,
                     text_encoder_2=tiny_clip_text_model(tok_2, seed=3, num_hidden_layers=2, with_projection=True))
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return parts


def sd_text2image():
    return kernel.component("StableDiffusionPipeline")(**_parts())


def sd_img2img():
    return kernel.component("StableDiffusionImg2ImgPipeline")(**_parts())


def sd_inpaint():
    return kernel.component("StableDiffusionInpaintPipeline")(**_parts())


def sdxl_text2image():
    return kernel.component("StableDiffusionXLPipeline")(**_parts(xl=True))


def sdxl_img2img():
    return kernel.component("StableDiffusionXLImg2ImgPipeline")(**_parts(xl=True))


def sdxl_inpaint():
    return kernel.component("StableDiffusionXLInpaintPipeline")(**_parts(xl=True))


def _pag(name: str, xl: bool = False):
    def build():
        return kernel.component(name)(**_parts(xl=xl), pag_applied_layers=["mid", "up"])
    build.__name__ = name
    return build


PAG_PIPELINES = {
    "StableDiffusionPAGPipeline": (False, "text"),
    "StableDiffusionPAGImg2ImgPipeline": (False, "image"),
    "StableDiffusionPAGInpaintPipeline": (False, "inpaint"),
    "StableDiffusionXLPAGPipeline": (True, "text"),
    "StableDiffusionXLPAGImg2ImgPipeline": (True, "image"),
    "StableDiffusionXLPAGInpaintPipeline": (True, "inpaint"),
}
CONTRACT_COVERS = ["StableDiffusionPAGPipeline", "StableDiffusionPAGImg2ImgPipeline", "StableDiffusionPAGInpaintPipeline",
                   "StableDiffusionXLPAGPipeline", "StableDiffusionXLPAGImg2ImgPipeline",
                   "StableDiffusionXLPAGInpaintPipeline"]
assert set(CONTRACT_COVERS) == set(PAG_PIPELINES)


def auto_text2image():
    pipe = kernel.component("AutoPipelineForText2Image").from_pipe(sdxl_inpaint())
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    return pipe


def auto_img2img():
    pipe = kernel.component("AutoPipelineForImage2Image").from_pipe(sd_inpaint())
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    return pipe


def auto_inpaint():
    pipe = kernel.component("AutoPipelineForInpainting").from_pipe(sdxl_img2img())
    assert type(pipe).__name__ == "StableDiffusionXLInpaintPipeline"
    return pipe


def text_inputs(pipe, batch_size, generator):
    return dict(prompt=[PROMPTS[i % len(PROMPTS)] for i in range(batch_size)], height=SIZE, width=SIZE,
                num_inference_steps=2, generator=generator)


def image_inputs(pipe, batch_size, generator):
    inputs = text_inputs(pipe, batch_size, generator)
    del inputs["height"], inputs["width"]  # image-to-image takes the size of its image
    # strength 0.6 of 2 steps runs one step (SDXL's default 0.3 would leave none: a ValueError)
    return {**inputs, "image": [fx.image(SIZE, SIZE, seed=i) for i in range(batch_size)], "strength": 0.6}


def inpaint_inputs(pipe, batch_size, generator):
    images = [fx.image(SIZE, SIZE, seed=i) for i in range(batch_size)]
    masks = [fx.mask(SIZE, SIZE)] * batch_size
    return {**text_inputs(pipe, batch_size, generator), "image": images, "mask_image": masks}


class TestStableDiffusionPipelineContracts(PipelineContract):
    component = sd_text2image
    contract_inputs = staticmethod(text_inputs)


class TestStableDiffusionImg2ImgPipelineContracts(PipelineContract):
    component = sd_img2img
    contract_inputs = staticmethod(image_inputs)


class TestStableDiffusionInpaintPipelineContracts(PipelineContract):
    component = sd_inpaint
    contract_inputs = staticmethod(inpaint_inputs)


class TestStableDiffusionXLPipelineContracts(PipelineContract):
    component = sdxl_text2image
    contract_inputs = staticmethod(text_inputs)


class TestStableDiffusionXLImg2ImgPipelineContracts(PipelineContract):
    component = sdxl_img2img
    contract_inputs = staticmethod(image_inputs)


class TestStableDiffusionXLInpaintPipelineContracts(PipelineContract):
    component = sdxl_inpaint
    contract_inputs = staticmethod(inpaint_inputs)


class TestAutoPipelineForText2ImageContracts(PipelineContract):
    component = auto_text2image
    contract_options = {"name": "AutoPipelineForText2Image(StableDiffusionXLInpaintPipeline)"}
    contract_inputs = staticmethod(text_inputs)


class TestAutoPipelineForImage2ImageContracts(PipelineContract):
    component = auto_img2img
    contract_options = {"name": "AutoPipelineForImage2Image(StableDiffusionInpaintPipeline)"}
    contract_inputs = staticmethod(image_inputs)


class TestAutoPipelineForInpaintingContracts(PipelineContract):
    component = auto_inpaint
    contract_options = {"name": "AutoPipelineForInpainting(StableDiffusionXLImg2ImgPipeline)"}
    contract_inputs = staticmethod(inpaint_inputs)


_INPUTS = {"text": text_inputs, "image": image_inputs, "inpaint": inpaint_inputs}
for _name, (_xl, _task) in PAG_PIPELINES.items():
    globals()[f"Test{_name}Contracts"] = type(f"Test{_name}Contracts", (PipelineContract,), {
        "component": staticmethod(_pag(_name, _xl)), "contract_inputs": staticmethod(_INPUTS[_task]),
        "__module__": __name__})


# ------------------------------------------------------------------ unconditional (UNet2DModel)
def _pixel_unet():
    torch.manual_seed(0)
    return kernel.component("UNet2DModel")(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=4).eval()


def ddpm():
    return kernel.component("DDPMPipeline")(unet=_pixel_unet(), scheduler=kernel.component("DDPMScheduler")())


def ddim():
    return kernel.component("DDIMPipeline")(unet=_pixel_unet(), scheduler=kernel.component("DDIMScheduler")())


def unconditional_inputs(pipe, batch_size, generator):
    return dict(batch_size=batch_size, num_inference_steps=2, generator=generator)


UNCONDITIONAL = {
    "output_types": ("pil", "np", "pt"),  # pixel-space models: no latents to return
    "invalid_inputs": [{"batch_size": 0}, {"output_type": "latent"}],
}


class TestDDPMPipelineContracts(PipelineContract):
    component = ddpm
    contract_options = UNCONDITIONAL
    contract_inputs = staticmethod(unconditional_inputs)


class TestDDIMPipelineContracts(PipelineContract):
    component = ddim
    contract_options = UNCONDITIONAL
    contract_inputs = staticmethod(unconditional_inputs)
