"""Tiny Würstchen components (the sizes of Diffusers' own Würstchen pipeline tests), as Diffusers / ours pairs
with the same weights.  The CLIP tokenizer and text encoders come from transformers and are shared."""

from __future__ import annotations

import functools
import tempfile

import torch

from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer

EMBED = 32  # text encoder width
#: Diffusers' test prior: 2-channel embeddings.
PRIOR = dict(c_in=2, c=8, depth=2, c_cond=EMBED, c_r=8, nhead=2)
#: Diffusers' test decoder: one 320-wide level without effnet injection.
DECODER = dict(c_cond=EMBED, c_hidden=[320], nhead=[-1], blocks=[4], level_config=["CT"], clip_embd=EMBED,
               inject_effnet=[False])
#: A small decoder with what Diffusers' test one lacks: two levels, attention, effnet injection, skips.
DECODER_LEVELS = dict(c_in=4, c_out=4, c_r=8, patch_size=2, c_cond=EMBED, c_hidden=[8, 16], nhead=[-1, 2],
                      blocks=[1, 2], level_config=["CT", "CTA"], inject_effnet=[False, True], effnet_embd=16,
                      clip_embd=24)
#: Diffusers' test Paella VQ-GAN.
VQGAN = dict(bottleneck_blocks=1, num_vq_embeddings=2)


def diffusers_wuerstchen():
    """Diffusers 0.42.1 keeps Würstchen under ``pipelines.deprecated``."""
    from diffusers.pipelines.deprecated import wuerstchen

    return wuerstchen


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Non-zero weights everywhere (the zero-initialised heads and GRN would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def ours_of(module: torch.nn.Module) -> torch.nn.Module:
    """Our class of the same name (through the registry), Diffusers' config, the same weights."""
    from kernel.registry import get_registry

    cls = get_registry().resolve(type(module).__name__)
    model = cls.from_config(dict(module.config))
    result = model.load_state_dict(module.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


def ref_prior(seed: int = 0, **overrides):
    return randomize(diffusers_wuerstchen().WuerstchenPrior(**{**PRIOR, **overrides}), seed)


def ref_decoder(config: dict = DECODER, seed: int = 1, std: float = 0.1):
    return randomize(diffusers_wuerstchen().WuerstchenDiffNeXt(**config), seed, std)


def ref_vqgan(seed: int = 2):
    torch.manual_seed(seed)
    return diffusers_wuerstchen().PaellaVQModel(**VQGAN).eval()


@functools.lru_cache(maxsize=None)
def tokenizer():
    return tiny_clip_tokenizer(tempfile.mkdtemp(prefix="wuerstchen-tok-"))


@functools.lru_cache(maxsize=None)
def text_encoder(seed: int = 0):
    return tiny_clip_text_model(tokenizer(), seed=seed, hidden_size=EMBED, num_hidden_layers=2).eval()
