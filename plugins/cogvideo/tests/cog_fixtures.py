"""Tiny CogVideoX components shared by the tests (configs follow Diffusers' own tiny test models)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def single_thread():
    """Tiny models run fastest on one thread, above all on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# 2b-like: sin-cos positions; 5b-like: rotary; 2b-I2V-like: rotary + learned table; 1.5-like: temporal patches.
TRANSFORMER = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
                   text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
                   temporal_compression_ratio=4, max_text_seq_length=7)
VARIANTS = {
    "sincos": {},
    "rotary": dict(use_rotary_positional_embeddings=True),
    "learned": dict(use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True),
    "patch_t": dict(use_rotary_positional_embeddings=True, patch_size_t=2, ofs_embed_dim=8, patch_bias=False),
}


def transformer_config(variant: str) -> dict:
    return {**TRANSFORMER, **VARIANTS[variant]}


def transfer(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Copy every parameter and persistent buffer of ``src`` into ``dst`` (same names, strict)."""
    dst.load_state_dict(src.state_dict(), strict=True)


VAE = dict(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
           up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
           layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4, sample_height=16, sample_width=16)


# Pipelines: 16x16 pixels -> 2x2 latents, one patch per latent cell, 16 text tokens.
PIPE_TRANSFORMER = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
                        text_embed_dim=32, num_layers=1, sample_width=2, sample_height=2, sample_frames=9, patch_size=1,
                        temporal_compression_ratio=4, max_text_seq_length=16)
SCHEDULER = dict(beta_schedule="scaled_linear", clip_sample=False, prediction_type="v_prediction",
                 rescale_betas_zero_snr=True, set_alpha_to_one=True, snr_shift_scale=3.0, timestep_spacing="trailing")
SIZE = 16


def tokenizer():
    from kernel_t5.testing import tiny_t5_tokenizer

    return tiny_t5_tokenizer()


def text_encoder():
    from kernel_t5.testing import tiny_t5_encoder

    return tiny_t5_encoder(tokenizer(), d_model=32)


def pipeline_parts(rotary: bool = False, **transformer_extra) -> tuple[dict, dict]:
    """``(ours, diffusers')`` component dicts with the same random weights."""
    import diffusers

    import kernel_cogvideo as ours

    cfg = {**PIPE_TRANSFORMER, **transformer_extra}
    if rotary:
        cfg["use_rotary_positional_embeddings"] = True
    torch.manual_seed(0)
    ref_t = diffusers.CogVideoXTransformer3DModel(**cfg).eval()
    ref_v = diffusers.AutoencoderKLCogVideoX(**VAE).eval()
    our_t, our_v = ours.CogVideoXTransformer3DModel(**cfg).eval(), ours.AutoencoderKLCogVideoX(**VAE).eval()
    transfer(ref_t, our_t)
    transfer(ref_v, our_v)
    tok, enc = tokenizer(), text_encoder()
    return (dict(tokenizer=tok, text_encoder=enc, vae=our_v, transformer=our_t,
                 scheduler=ours.CogVideoXDDIMScheduler(**SCHEDULER)),
            dict(tokenizer=tok, text_encoder=enc, vae=ref_v, transformer=ref_t,
                 scheduler=diffusers.CogVideoXDDIMScheduler(**SCHEDULER)))


def video(frames: int = 9, seed: int = 0):
    """A list of random RGB PIL frames of SIZE x SIZE."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(frames)]
