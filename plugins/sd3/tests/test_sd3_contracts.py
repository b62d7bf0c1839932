"""The kernel contract suite on every SD3 component (tiny MMDiT and tiny pipelines)."""

from __future__ import annotations

import functools

import pytest
import torch

import kernel
from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer
from kernel_contracts import DenoiserContract, PipelineContract
from kernel_contracts.testing import box_mask, random_image
from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer

TINY = dict(sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
            caption_projection_dim=16, joint_attention_dim=16, pooled_projection_dim=24, out_channels=4,
            pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def perturbed(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Move the zero-initialised gates away from zero so every path shows in the output."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def tiny_sd3_transformer():
    torch.manual_seed(0)
    return perturbed(kernel.component("SD3Transformer2DModel")(**TINY))


class TestSD3Transformer2DModelContracts(DenoiserContract):
    component = tiny_sd3_transformer

    def contract_inputs(self, model, batch_size, generator):
        return {
            "hidden_states": torch.randn(batch_size, 4, 8, 12, generator=generator),
            "encoder_hidden_states": torch.randn(batch_size, 5, 16, generator=generator),
            "pooled_projections": torch.randn(batch_size, 24, generator=generator),
            "timestep": torch.rand(batch_size, generator=generator) * 1000,
        }


# ------------------------------------------------------------------ pipelines
SIZE = 32  # pixels; the 2-level VAE halves it


@functools.lru_cache(maxsize=None)
def _parts() -> dict:
    """Our tiny SD3 components (the sizes of test_sd3_pipelines.py, built from our classes)."""
    torch.manual_seed(0)
    transformer = perturbed(kernel.component("SD3Transformer2DModel")(
        sample_size=32, patch_size=1, in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=16,
        pos_embed_max_size=32), scale=0.05)
    vae = kernel.component("AutoencoderKL")(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4), layers_per_block=1,
        latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=1,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    tok, tok_2, tok_3 = tiny_clip_tokenizer(), tiny_clip_tokenizer(), tiny_t5_tokenizer()
    clip = functools.partial(tiny_clip_text_model, with_projection=True, num_hidden_layers=2)
    return dict(transformer=transformer.eval(), vae=vae.eval(),
                scheduler=kernel.component("FlowMatchEulerDiscreteScheduler")(shift=3.0),
                tokenizer=tok, text_encoder=clip(tok, seed=1), tokenizer_2=tok_2, text_encoder_2=clip(tok_2, seed=2),
                tokenizer_3=tok_3, text_encoder_3=tiny_t5_encoder(tok_3, d_model=32, seed=3))


def sd3_text2image():
    return kernel.component("StableDiffusion3Pipeline")(**_parts())


def sd3_img2img():
    return kernel.component("StableDiffusion3Img2ImgPipeline")(**_parts())


def sd3_inpaint():
    return kernel.component("StableDiffusion3InpaintPipeline")(**_parts())


def text_inputs(pipe, batch_size, generator):
    prompts = ("a photo of a cat", "the dog", "a red house")
    return dict(prompt=[prompts[i % 3] for i in range(batch_size)], height=SIZE, width=SIZE, num_inference_steps=2,
                max_sequence_length=16, generator=generator)


def image_inputs(pipe, batch_size, generator):
    # strength 0.6 of 2 steps runs one step
    images = [random_image(SIZE, SIZE, seed=i) for i in range(batch_size)]
    return {**text_inputs(pipe, batch_size, generator), "image": images, "strength": 0.6}


def inpaint_inputs(pipe, batch_size, generator):
    return {**image_inputs(pipe, batch_size, generator), "mask_image": [box_mask(SIZE, SIZE)] * batch_size}


class TestStableDiffusion3PipelineContracts(PipelineContract):
    component = sd3_text2image
    contract_inputs = staticmethod(text_inputs)


class TestStableDiffusion3Img2ImgPipelineContracts(PipelineContract):
    component = sd3_img2img
    contract_inputs = staticmethod(image_inputs)


class TestStableDiffusion3InpaintPipelineContracts(PipelineContract):
    component = sd3_inpaint
    contract_inputs = staticmethod(inpaint_inputs)


def sd3_pag():
    return kernel.component("StableDiffusion3PAGPipeline")(**_parts(), pag_applied_layers="blocks.0")


def sd3_pag_img2img():
    return kernel.component("StableDiffusion3PAGImg2ImgPipeline")(**_parts(), pag_applied_layers="blocks.0")


class TestStableDiffusion3PAGPipelineContracts(PipelineContract):
    component = sd3_pag
    contract_inputs = staticmethod(text_inputs)


class TestStableDiffusion3PAGImg2ImgPipelineContracts(PipelineContract):
    component = sd3_pag_img2img
    contract_inputs = staticmethod(image_inputs)
