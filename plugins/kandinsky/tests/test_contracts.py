"""The kernel contract suite on every component kernel-kandinsky registers (tiny models and pipelines).

VQModel runs its autoencoder contracts in test_vq_model.py.
"""

from __future__ import annotations

import functools

import numpy as np
import PIL.Image
import torch

import kernel
from kernel_contracts import DenoiserContract, PipelineContract

from kandinsky_fixtures import EMBED, combined_pipes, decoder_pipes, prior, prior_pipes

SIZE = dict(height=32, width=32)


def tiny_prior():
    return prior()[1]


class TestPriorTransformerContracts(DenoiserContract):
    component = tiny_prior

    def contract_inputs(self, model, batch_size, generator):
        mask = torch.ones(batch_size, 77, dtype=torch.bool)
        mask[:, 5:] = False
        return {"hidden_states": torch.randn(batch_size, EMBED, generator=generator),
                "timestep": torch.randint(0, 1000, (batch_size,), generator=generator),
                "proj_embedding": torch.randn(batch_size, EMBED, generator=generator),
                "encoder_hidden_states": torch.randn(batch_size, 77, EMBED, generator=generator),
                "attention_mask": mask}


# ------------------------------------------------------------------ pipelines (ours only; the pairs' second item)
@functools.lru_cache(maxsize=None)
def _ours(builder, *args, **kwargs):
    return builder(*args, **kwargs)[1]


def _embeds(batch_size, generator):
    return torch.randn(batch_size, EMBED, generator=generator), torch.randn(batch_size, EMBED, generator=generator)


def prior_inputs(pipe, batch_size, generator):
    prompts = ("a photo of a cat", "The Dog ", "a red house")
    return dict(prompt=[prompts[i % 3] for i in range(batch_size)], num_inference_steps=2, generator=generator)


class TestKandinskyV22PriorPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(prior_pipes))
    contract_inputs = staticmethod(prior_inputs)
    contract_options = {"output_types": ("pt", "np")}


def emb2emb_pipes():
    from kernel_kandinsky import KandinskyV22PriorEmb2EmbPipeline

    return None, KandinskyV22PriorEmb2EmbPipeline.from_pipe(prior_pipes()[1])


def emb2emb_inputs(pipe, batch_size, generator):
    image = torch.randn(1, EMBED, generator=generator)
    return dict(prior_inputs(pipe, batch_size, generator), image=image, num_inference_steps=4, strength=0.5)


class TestKandinskyV22PriorEmb2EmbPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(emb2emb_pipes))
    contract_inputs = staticmethod(emb2emb_inputs)
    contract_options = {"output_types": ("pt", "np")}


def decoder_inputs(pipe, batch_size, generator):
    pos, neg = _embeds(batch_size, generator)
    return dict(image_embeds=pos, negative_image_embeds=neg, **SIZE, num_inference_steps=2, generator=generator)


class TestKandinskyV22PipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(decoder_pipes))
    contract_inputs = staticmethod(decoder_inputs)


def _image(batch_size):
    rng = np.random.RandomState(batch_size)
    return [PIL.Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8)) for _ in range(batch_size)]


def img2img_inputs(pipe, batch_size, generator):
    return dict(decoder_inputs(pipe, batch_size, generator), image=_image(batch_size), num_inference_steps=4,
                strength=0.5)


class TestKandinskyV22Img2ImgPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(decoder_pipes, "KandinskyV22Img2ImgPipeline"))
    contract_inputs = staticmethod(img2img_inputs)


def inpaint_inputs(pipe, batch_size, generator):
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[:16] = 1
    return dict(decoder_inputs(pipe, batch_size, generator), image=_image(batch_size), mask_image=[mask] * batch_size)


class TestKandinskyV22InpaintPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(decoder_pipes, "KandinskyV22InpaintPipeline",
                                           unet_over=(("in_channels", 9),)))
    contract_inputs = staticmethod(inpaint_inputs)


def controlnet_inputs(pipe, batch_size, generator):
    return dict(decoder_inputs(pipe, batch_size, generator), hint=torch.rand(batch_size, 3, 128, 128, generator=generator))


class TestKandinskyV22ControlnetPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(decoder_pipes, "KandinskyV22ControlnetPipeline",
                                           unet_over=(("in_channels", 8), ("addition_embed_type", "image_hint"))))
    contract_inputs = staticmethod(controlnet_inputs)
    contract_options = {"output_types": ("pil", "np", "pt")}


def controlnet_img2img_inputs(pipe, batch_size, generator):
    return dict(controlnet_inputs(pipe, batch_size, generator), image=_image(batch_size), num_inference_steps=4,
                strength=0.5)


class TestKandinskyV22ControlnetImg2ImgPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(decoder_pipes, "KandinskyV22ControlnetImg2ImgPipeline",
                                           unet_over=(("in_channels", 8), ("addition_embed_type", "image_hint"))))
    contract_inputs = staticmethod(controlnet_img2img_inputs)
    contract_options = {"output_types": ("pil", "np", "pt")}


def combined_inputs(pipe, batch_size, generator):
    return dict(prior_inputs(pipe, batch_size, generator), **SIZE, prior_num_inference_steps=2)


class TestKandinskyV22CombinedPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(combined_pipes))
    contract_inputs = staticmethod(combined_inputs)


def img2img_combined_inputs(pipe, batch_size, generator):
    return dict(combined_inputs(pipe, batch_size, generator), image=_image(batch_size), num_inference_steps=4,
                strength=0.5)


class TestKandinskyV22Img2ImgCombinedPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(combined_pipes, "KandinskyV22Img2ImgCombinedPipeline"))
    contract_inputs = staticmethod(img2img_combined_inputs)


def inpaint_combined_inputs(pipe, batch_size, generator):
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[:16] = 1
    return dict(combined_inputs(pipe, batch_size, generator), image=_image(batch_size), mask_image=[mask] * batch_size)


class TestKandinskyV22InpaintCombinedPipelineContracts(PipelineContract):
    component = staticmethod(lambda: _ours(combined_pipes, "KandinskyV22InpaintCombinedPipeline",
                                           unet_over=(("in_channels", 9),)))
    contract_inputs = staticmethod(inpaint_combined_inputs)


# The classes above build their subjects with factories; these are the registered names they cover
# (VQModel's autoencoder contracts live in test_vq_model.py).
CONTRACT_COVERS = ["VQModel", "PriorTransformer", "KandinskyV22PriorPipeline", "KandinskyV22Pipeline",
                   "KandinskyV22Img2ImgPipeline", "KandinskyV22InpaintPipeline", "KandinskyV22ControlnetPipeline",
                   "KandinskyV22PriorEmb2EmbPipeline", "KandinskyV22ControlnetImg2ImgPipeline",
                   "KandinskyV22CombinedPipeline", "KandinskyV22Img2ImgCombinedPipeline",
                   "KandinskyV22InpaintCombinedPipeline"]


def test_contract_covers_names_what_the_plugin_registers():
    from importlib.metadata import entry_points

    from test_contracts3 import CONTRACT_COVERS as COVERS_3
    from test_contracts21 import CONTRACT_COVERS as COVERS_21

    registered = {ep.name for ep in entry_points(group="kernel.components") if ep.value.startswith("kernel_kandinsky")}
    assert registered == set(CONTRACT_COVERS) | set(COVERS_21) | set(COVERS_3)
    assert all(kernel.component(name) for name in CONTRACT_COVERS)
