"""The kernel contract suite on the Kandinsky 2.1 components (tiny models and pipelines).

MultilingualCLIP declares no component kind (a transformers text model the decoder calls, not a prompt
conditioner); its parity with Diffusers and its folders are tested in test_kandinsky21.py, and here it is
built by name and checked for the layout Diffusers' checkpoints use.
"""

from __future__ import annotations

import functools

import numpy as np
import PIL.Image
import torch

import kernel
from kernel_contracts import PipelineContract

from kandinsky21_fixtures import MCLIP, combined21_pipes, decoder21_pipes, prior21_pipes
from kandinsky_fixtures import EMBED

SIZE = dict(height=32, width=32)
PROMPTS = ("a photo of a cat", "The Dog ", "a red house")


@functools.lru_cache(maxsize=None)
def _ours(builder, *args, **kwargs):
    return builder(*args, **kwargs)[1]


def prior_inputs(pipe, batch_size, generator):
    return dict(prompt=[PROMPTS[i % 3] for i in range(batch_size)], num_inference_steps=2, generator=generator)


class TestKandinskyPriorPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(prior21_pipes))
    contract_inputs = staticmethod(prior_inputs)
    contract_options = {"output_types": ("pt", "np")}


def decoder_inputs(pipe, batch_size, generator):
    pos, neg = torch.randn(batch_size, EMBED, generator=generator), torch.randn(batch_size, EMBED, generator=generator)
    return dict(prompt=[PROMPTS[i % 3] for i in range(batch_size)], image_embeds=pos, negative_image_embeds=neg,
                **SIZE, num_inference_steps=2, generator=generator)


class TestKandinskyPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(decoder21_pipes))
    contract_inputs = staticmethod(decoder_inputs)
    contract_options = {"output_types": ("pil", "np", "pt")}


def _image(batch_size):
    rng = np.random.RandomState(batch_size)
    return [PIL.Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8)) for _ in range(batch_size)]


def img2img_inputs(pipe, batch_size, generator):
    return dict(decoder_inputs(pipe, batch_size, generator), image=_image(batch_size), num_inference_steps=4,
                strength=0.5)


class TestKandinskyImg2ImgPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(decoder21_pipes, "KandinskyImg2ImgPipeline"))
    contract_inputs = staticmethod(img2img_inputs)
    contract_options = {"output_types": ("pil", "np", "pt")}


def inpaint_inputs(pipe, batch_size, generator):
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[:16] = 1
    return dict(decoder_inputs(pipe, batch_size, generator), image=_image(batch_size), mask_image=[mask] * batch_size)


class TestKandinskyInpaintPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(decoder21_pipes, "KandinskyInpaintPipeline",
                                           unet_over=(("in_channels", 9),)))
    contract_inputs = staticmethod(inpaint_inputs)
    contract_options = {"output_types": ("pil", "np", "pt")}


def combined_inputs(pipe, batch_size, generator):
    return dict(prior_inputs(pipe, batch_size, generator), **SIZE, prior_num_inference_steps=2)


class TestKandinskyCombinedPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(combined21_pipes))
    contract_inputs = staticmethod(combined_inputs)
    contract_options = {"output_types": ("pil", "np", "pt")}


def img2img_combined_inputs(pipe, batch_size, generator):
    return dict(combined_inputs(pipe, batch_size, generator), image=_image(batch_size), num_inference_steps=4,
                strength=0.5)


class TestKandinskyImg2ImgCombinedPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(combined21_pipes, "KandinskyImg2ImgCombinedPipeline"))
    contract_inputs = staticmethod(img2img_combined_inputs)
    contract_options = {"output_types": ("pil", "np", "pt")}


def inpaint_combined_inputs(pipe, batch_size, generator):
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[:16] = 1
    return dict(combined_inputs(pipe, batch_size, generator), image=_image(batch_size), mask_image=[mask] * batch_size)


class TestKandinskyInpaintCombinedPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(combined21_pipes, "KandinskyInpaintCombinedPipeline",
                                           unet_over=(("in_channels", 9),)))
    contract_inputs = staticmethod(inpaint_combined_inputs)
    contract_options = {"output_types": ("pil", "np", "pt")}


def test_multilingual_clip_by_name_has_the_checkpoint_layout():
    cls = kernel.component("MultilingualCLIP")
    model = cls(cls.config_class(**MCLIP))
    keys = set(model.state_dict())
    assert "LinearTransformation.weight" in keys and "transformer.embeddings.word_embeddings.weight" in keys
    assert model.LinearTransformation.out_features == EMBED and model.config.model_type == "M-CLIP"


# The registered names the classes and test above cover.
CONTRACT_COVERS = ["MultilingualCLIP", "KandinskyPriorPipeline", "KandinskyPipeline", "KandinskyCombinedPipeline",
                   "KandinskyImg2ImgPipeline", "KandinskyImg2ImgCombinedPipeline",
                   "KandinskyInpaintPipeline", "KandinskyInpaintCombinedPipeline"]
