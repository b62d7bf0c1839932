"""Tiny SD3 and Flux components and ControlNets for the kernel-controlnet tests (the shapes of
plugins/sd3/tests and plugins/flux/tests).

A fresh transformer ControlNet's output layers (and its control embedding) are zero, so it changes
nothing and a parity test with it would prove nothing: every builder here adds seeded noise to all weights.
Builders named ``*_pair`` return (Diffusers' module, ours) with the same weights; the others build ours alone,
without Diffusers (for the contract tests).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

import kernel
from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer
from kernel_contracts.testing import box_mask, random_image  # noqa: F401 (re-exported)
from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer

SIZE = 32
SD3_TRANSFORMER = dict(sample_size=32, patch_size=1, in_channels=16, num_layers=2, attention_head_dim=8,
                       num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                       pooled_projection_dim=64, out_channels=16, pos_embed_max_size=32)
SD3_CN = {**{k: v for k, v in SD3_TRANSFORMER.items() if k != "out_channels"}, "num_layers": 1}
#: SD3.5 ControlNets: image-only blocks, no position embedding of their own, the prompt's pooled text.
SD35 = dict(joint_attention_dim=None, use_pos_embed=False, pos_embed_type=None, force_zeros_for_pooled_projection=False)
SD3_VAE = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4),
               down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
               layers_per_block=1, latent_channels=16, norm_num_groups=1, use_quant_conv=False,
               use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)

FLUX_TRANSFORMER = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                        axes_dims_rope=[4, 4, 8], guidance_embeds=True)
FLUX_CN = {k: v for k, v in FLUX_TRANSFORMER.items()}
FLUX_VAE = dict(SD3_VAE, latent_channels=4)
#: XLabs-style nets read the control image through their own encoder (8x down) and 2x2 patches: they need a
#: VAE that downsamples 8x too, so the packed token grid matches (64-channel tokens, 64 px images).
XLABS_TRANSFORMER = dict(FLUX_TRANSFORMER, in_channels=64)
XLABS_CN = dict(FLUX_CN, in_channels=64, patch_size=2, conditioning_embedding_channels=16)
XLABS_VAE = dict(SD3_VAE, block_out_channels=(4, 4, 4, 4), down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4)


def randomise(model: torch.nn.Module, seed: int, std: float) -> torch.nn.Module:
    """Add seeded noise of ``std`` to every weight (zero-initialised layers included); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def ours_of(module: torch.nn.Module) -> torch.nn.Module:
    """Our class of the same name, from the Diffusers module's config, with the same weights."""
    model = kernel.component(type(module).__name__).from_config(dict(module.config))
    result = model.load_state_dict(module.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


def _build(name: str, config: dict, seed: int, std: float, diffusers_too: bool):
    torch.manual_seed(seed)
    if not diffusers_too:
        return randomise(kernel.component(name)(**config), seed, std)
    import diffusers

    theirs = randomise(getattr(diffusers, name)(**config), seed, std)
    return theirs, ours_of(theirs)


# ---------------------------------------------------------------------------- nets
def sd3_net_pair(seed: int = 5, **over):
    return _build("SD3ControlNetModel", {**SD3_CN, **over}, seed, 0.2, True)


def sd3_net(seed: int = 5, **over):
    return _build("SD3ControlNetModel", {**SD3_CN, **over}, seed, 0.2, False)


def flux_net_pair(seed: int = 5, **over):
    return _build("FluxControlNetModel", {**FLUX_CN, **over}, seed, 0.2, True)


def flux_net(seed: int = 5, **over):
    return _build("FluxControlNetModel", {**FLUX_CN, **over}, seed, 0.2, False)


# ---------------------------------------------------------------------------- pipeline components
def transformer_pair(family: str):
    """A fresh (Diffusers', ours) denoiser pair of ``family`` (``sd3`` or ``flux``)."""
    if family == "sd3":
        return _build("SD3Transformer2DModel", SD3_TRANSFORMER, 0, 0.05, True)
    return _build("FluxTransformer2DModel", FLUX_TRANSFORMER, 0, 0.05, True)



@functools.lru_cache(maxsize=None)
def _text_parts(flux: bool) -> dict:
    tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    if flux:
        return dict(text_encoder=tiny_clip_text_model(tok, seed=1), tokenizer=tok,
                    text_encoder_2=tiny_t5_encoder(t5_tok, d_model=32, seed=2), tokenizer_2=t5_tok)
    tok_2 = tiny_clip_tokenizer()
    return dict(text_encoder=tiny_clip_text_model(tok, seed=1, with_projection=True), tokenizer=tok,
                text_encoder_2=tiny_clip_text_model(tok_2, seed=2, with_projection=True), tokenizer_2=tok_2,
                text_encoder_3=tiny_t5_encoder(t5_tok, d_model=32, seed=3), tokenizer_3=t5_tok)


def _scheduler(flux: bool, diffusers_too: bool):
    config = dict(use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256) if flux else dict(shift=3.0)
    ours = kernel.component("FlowMatchEulerDiscreteScheduler")(**config)
    if not diffusers_too:
        return ours
    import diffusers

    return diffusers.FlowMatchEulerDiscreteScheduler(**config), ours


@functools.lru_cache(maxsize=None)
def components(family: str, diffusers_too: bool = True):
    """(Diffusers' components, ours) -- or ours alone -- for ``family`` in ``sd3``, ``flux``, ``xlabs``
    (Flux with an 8x VAE), without the controlnet."""
    flux = family != "sd3"
    transformer = {"sd3": SD3_TRANSFORMER, "flux": FLUX_TRANSFORMER, "xlabs": XLABS_TRANSFORMER}[family]
    vae = {"sd3": SD3_VAE, "flux": FLUX_VAE, "xlabs": XLABS_VAE}[family]
    t = _build("FluxTransformer2DModel" if flux else "SD3Transformer2DModel", transformer, 0, 0.05, diffusers_too)
    v = _build("AutoencoderKL", vae, 0, 0.0, diffusers_too)
    s = _scheduler(flux, diffusers_too)
    text = _text_parts(flux)
    if not diffusers_too:
        return dict(transformer=t, vae=v, scheduler=s, **text)
    return dict(transformer=t[0], vae=v[0], scheduler=s[0], **text), dict(transformer=t[1], vae=v[1], scheduler=s[1],
                                                                          **text)


def image(seed: int = 7, size: int = SIZE):
    return random_image(size, size, seed=seed)


def mask(size: int = SIZE):
    return box_mask(size, size, box=(size // 4, size // 4, 3 * size // 4, 5 * size // 8))


def gen(seed: int = 0):
    return torch.Generator().manual_seed(seed)


def assert_close(a, b, atol: float = 1e-3) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, atol=atol, rtol=0)
