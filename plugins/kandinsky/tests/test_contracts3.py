"""The kernel contract suite on the Kandinsky 3 components (tiny models and pipeline)."""

from __future__ import annotations

import functools

import torch

import kernel
from kernel_contracts import DenoiserContract, PipelineContract
from kernel_kandinsky.unet_kandinsky3 import Kandinsky3UNet

#: The components below are built by functions (component = callable), which the coverage scan cannot read.
CONTRACT_COVERS = ["Kandinsky3UNet", "Kandinsky3Pipeline", "Kandinsky3Img2ImgPipeline"]

TINY = dict(in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=3,
            block_out_channels=(32, 64), cross_attention_dim=4, encoder_hid_dim=32)


def tiny_unet():
    torch.manual_seed(0)
    return Kandinsky3UNet(**TINY).eval()


class TestKandinsky3UNet(DenoiserContract):
    component = tiny_unet

    def contract_inputs(self, model, batch_size, generator):
        mask = torch.ones(batch_size, 6, dtype=torch.long)
        mask[:, 4:] = 0
        return {"sample": torch.randn(batch_size, 4, 8, 8, generator=generator), "timestep": torch.tensor(10),
                "encoder_hidden_states": torch.randn(batch_size, 6, 32, generator=generator),
                "encoder_attention_mask": mask}


@functools.lru_cache(maxsize=None)
def tiny_pipeline():
    from kandinsky3_fixtures import folder

    pipe = kernel.load(folder()[0])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_inputs(pipe, batch_size, generator):
    prompts = ("a photo of a cat", "The Dog ", "a red house")
    return dict(prompt=[prompts[i % 3] for i in range(batch_size)], height=16, width=16, num_inference_steps=2,
                generator=generator)


class TestKandinsky3PipelineContracts(PipelineContract):
    component = staticmethod(tiny_pipeline)
    contract_inputs = staticmethod(pipeline_inputs)
    contract_options = {"output_types": ("pil", "np", "pt")}


@functools.lru_cache(maxsize=None)
def tiny_img2img_pipeline():
    from kandinsky3_fixtures import img2img_folder

    pipe = kernel.load(img2img_folder()[0])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def img2img_inputs(pipe, batch_size, generator):
    from kandinsky3_fixtures import picture

    inputs = pipeline_inputs(pipe, batch_size, generator)
    del inputs["height"], inputs["width"]
    return dict(inputs, image=[picture(i, (16, 16)) for i in range(batch_size)], strength=0.5, num_inference_steps=4)


class TestKandinsky3Img2ImgPipelineContracts(PipelineContract):
    component = staticmethod(tiny_img2img_pipeline)
    contract_inputs = staticmethod(img2img_inputs)
