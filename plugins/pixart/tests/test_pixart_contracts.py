"""The kernel contract suite on every PixArt component (tiny DiT and tiny pipelines)."""

from __future__ import annotations

import functools

import pytest
import torch

import kernel
from kernel_contracts import DenoiserContract, PipelineContract
from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer

# The size embeddings take a third of the width each: num_attention_heads * attention_head_dim % 3 == 0.
BASE = dict(num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
            cross_attention_dim=24, caption_channels=16, patch_size=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_pixart_transformer():
    """A 1024-style model (size conditioning on resolution and aspect ratio), gates moved off zero."""
    torch.manual_seed(0)
    model = kernel.component("PixArtTransformer2DModel")(**BASE, sample_size=128)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


class TestPixArtTransformer2DModelContracts(DenoiserContract):
    component = tiny_pixart_transformer

    def contract_inputs(self, model, batch_size, generator):
        mask = torch.ones(batch_size, 6, dtype=torch.long)
        mask[:, 4:] = 0  # padded caption tokens
        return {
            "hidden_states": torch.randn(batch_size, 4, 8, 12, generator=generator),
            "encoder_hidden_states": torch.randn(batch_size, 6, 16, generator=generator),
            "timestep": torch.randint(0, 1000, (batch_size,), generator=generator),
            "encoder_attention_mask": mask,
            "added_cond_kwargs": {"resolution": torch.tensor([[64.0, 96.0]] * batch_size),
                                  "aspect_ratio": torch.tensor([[1.5]] * batch_size)},
        }


# ------------------------------------------------------------------ pipelines
SIZE = 32  # pixels; the 2-level VAE halves it, the transformer patches 2x2


@functools.lru_cache(maxsize=None)
def _parts() -> dict:
    """Our tiny PixArt components (the sizes of test_pixart_pipelines.py, built from our classes)."""
    torch.manual_seed(0)
    transformer = kernel.component("PixArtTransformer2DModel")(
        sample_size=16, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vae = kernel.component("AutoencoderKL")(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=1)
    tok = tiny_t5_tokenizer()
    return dict(transformer=transformer.eval(), vae=vae.eval(), tokenizer=tok,
                text_encoder=tiny_t5_encoder(tok, d_model=32, seed=1),
                scheduler=kernel.component("DPMSolverMultistepScheduler")())


def pixart_alpha():
    return kernel.component("PixArtAlphaPipeline")(**_parts())


def pixart_sigma():
    return kernel.component("PixArtSigmaPipeline")(**_parts())


def text_inputs(pipe, batch_size, generator):
    prompts = ("a photo of a cat", "The Dog ", "a red house")
    return dict(prompt=[prompts[i % 3] for i in range(batch_size)], height=SIZE, width=SIZE, num_inference_steps=2,
                use_resolution_binning=False, max_sequence_length=12, generator=generator)


class TestPixArtAlphaPipelineContracts(PipelineContract):
    component = pixart_alpha
    contract_inputs = staticmethod(text_inputs)


class TestPixArtSigmaPipelineContracts(PipelineContract):
    component = pixart_sigma
    contract_inputs = staticmethod(text_inputs)


def pixart_sigma_pag():
    return kernel.component("PixArtSigmaPAGPipeline")(**_parts(), pag_applied_layers="blocks.0")


class TestPixArtSigmaPAGPipelineContracts(PipelineContract):
    component = pixart_sigma_pag
    contract_inputs = staticmethod(text_inputs)
