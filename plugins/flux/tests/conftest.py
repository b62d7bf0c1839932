"""Tiny Flux components built with Diffusers (the test oracle), shared by the Flux pipeline tests."""

import pytest
import torch

from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer
from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer


def _tiny_flux_components(guidance: bool) -> dict:
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance)
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, latent_channels=4, norm_num_groups=1, use_quant_conv=False,
                                  use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    return dict(transformer=transformer, vae=vae, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
                    use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256),
                text_encoder=tiny_clip_text_model(tok, seed=1), tokenizer=tok,
                text_encoder_2=tiny_t5_encoder(t5_tok, d_model=32, seed=2), tokenizer_2=t5_tok)


@pytest.fixture(scope="session")
def tiny_flux_components():
    """``builder(guidance: bool) -> dict`` of Diffusers components (1+1-layer transformer, 2-level VAE)."""
    pytest.importorskip("diffusers")
    return _tiny_flux_components
