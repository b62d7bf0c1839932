"""The kernel contract suite on every Flux component (tiny MMDiT and tiny pipelines)."""

from __future__ import annotations

import functools

import pytest
import torch

import kernel
from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer
from kernel_contracts import DenoiserContract, PipelineContract
from kernel_contracts.testing import box_mask, random_image
from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer

TINY = dict(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=[2, 2, 4],
            guidance_embeds=True)
ROWS, COLS, TEXT = 3, 4, 5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_flux_transformer():
    torch.manual_seed(0)
    model = kernel.component("FluxTransformer2DModel")(**TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def image_ids(rows: int, cols: int) -> torch.Tensor:
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(-1, 3)


class TestFluxTransformer2DModelContracts(DenoiserContract):
    component = tiny_flux_transformer

    def contract_inputs(self, model, batch_size, generator):
        return {
            "hidden_states": torch.randn(batch_size, ROWS * COLS, 8, generator=generator),
            "encoder_hidden_states": torch.randn(batch_size, TEXT, 16, generator=generator),
            "pooled_projections": torch.randn(batch_size, 16, generator=generator),
            "timestep": torch.rand(batch_size, generator=generator),
            "guidance": torch.full((batch_size,), 3.5),
            "img_ids": image_ids(ROWS, COLS),
            "txt_ids": torch.zeros(TEXT, 3),
        }


# ------------------------------------------------------------------ pipelines
SIZE = 32  # pixels: the 2-level VAE halves it, packing halves it again (8x8 tokens)


@functools.lru_cache(maxsize=None)
def _parts() -> dict:
    """Our tiny Flux-dev components (same sizes as tests/conftest.py, built from our classes)."""
    torch.manual_seed(0)
    transformer = kernel.component("FluxTransformer2DModel")(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True)
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vae = kernel.component("AutoencoderKL")(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=1,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    scheduler = kernel.component("FlowMatchEulerDiscreteScheduler")(
        use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256)
    tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    return dict(transformer=transformer.eval(), vae=vae.eval(), scheduler=scheduler, tokenizer=tok,
                text_encoder=tiny_clip_text_model(tok, seed=1, num_hidden_layers=2), tokenizer_2=t5_tok,
                text_encoder_2=tiny_t5_encoder(t5_tok, d_model=32, seed=2))


def flux_text2image():
    return kernel.component("FluxPipeline")(**_parts())


def flux_img2img():
    return kernel.component("FluxImg2ImgPipeline")(**_parts())


def flux_inpaint():
    return kernel.component("FluxInpaintPipeline")(**_parts())


def text_inputs(pipe, batch_size, generator):
    prompts = ("a photo of a cat", "the dog", "a red house")
    return dict(prompt=[prompts[i % 3] for i in range(batch_size)], height=SIZE, width=SIZE, num_inference_steps=2,
                max_sequence_length=16, guidance_scale=3.5,
                generator=generator)


def image_inputs(pipe, batch_size, generator):
    # strength 0.6 of 2 steps runs one step
    images = [random_image(SIZE, SIZE, seed=i) for i in range(batch_size)]
    return {**text_inputs(pipe, batch_size, generator), "image": images, "strength": 0.6}


def inpaint_inputs(pipe, batch_size, generator):
    return {**image_inputs(pipe, batch_size, generator), "mask_image": [box_mask(SIZE, SIZE)] * batch_size}


class TestFluxPipelineContracts(PipelineContract):
    component = flux_text2image
    contract_inputs = staticmethod(text_inputs)


class TestFluxImg2ImgPipelineContracts(PipelineContract):
    component = flux_img2img
    contract_inputs = staticmethod(image_inputs)


class TestFluxInpaintPipelineContracts(PipelineContract):
    component = flux_inpaint
    contract_inputs = staticmethod(inpaint_inputs)
