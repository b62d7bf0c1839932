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


#: A decoder whose text and embedding matter: attention at the second level, effnet injected there.
DECODER_TEXT = {**DECODER_LEVELS, "clip_embd": EMBED}


def _schedulers():
    import diffusers
    from kernel_stable_cascade import DDPMWuerstchenScheduler

    return diffusers.DDPMWuerstchenScheduler(), DDPMWuerstchenScheduler()


def prior_pipes(std: float = 0.1):
    """(Diffusers' WuerstchenPriorPipeline, ours) over the same tiny components."""
    import diffusers
    from kernel_wuerstchen import WuerstchenPriorPipeline

    ref_model = randomize(diffusers_wuerstchen().WuerstchenPrior(**PRIOR), 0, std)
    s_ref, s_ours = _schedulers()
    ref = diffusers.WuerstchenPriorPipeline(tokenizer=tokenizer(), text_encoder=text_encoder(), prior=ref_model,
                                            scheduler=s_ref)
    ours = WuerstchenPriorPipeline(tokenizer=tokenizer(), text_encoder=text_encoder(), prior=ours_of(ref_model),
                                   scheduler=s_ours)
    for p in (ref, ours):
        p.set_progress_bar_config(disable=True)
    return ref, ours


def decoder_pipes(config: dict = DECODER_TEXT):
    """(Diffusers' WuerstchenDecoderPipeline, ours) over the same tiny components (the 320-wide test decoder with
    smaller weights, so its outputs stay in a range where fp32 agrees to 1e-4 rather than saturating)."""
    import diffusers
    from kernel_wuerstchen import WuerstchenDecoderPipeline

    ref_model, vq = ref_decoder(config, std=0.02 if config["c_hidden"][0] >= 320 else 0.1), ref_vqgan()
    s_ref, s_ours = _schedulers()
    ref = diffusers.WuerstchenDecoderPipeline(tokenizer=tokenizer(), text_encoder=text_encoder(), decoder=ref_model,
                                              scheduler=s_ref, vqgan=vq)
    ours = WuerstchenDecoderPipeline(tokenizer=tokenizer(), text_encoder=text_encoder(), decoder=ours_of(ref_model),
                                     scheduler=s_ours, vqgan=ours_of(vq))
    for p in (ref, ours):
        p.set_progress_bar_config(disable=True)
    return ref, ours


def combined_pipes(decoder_config: dict = DECODER):
    """(Diffusers' WuerstchenCombinedPipeline, ours): Diffusers' test set-up (its decoder by default)."""
    import diffusers
    from kernel_wuerstchen import WuerstchenCombinedPipeline

    prior_ref, prior_ours = prior_pipes()
    dec_ref, dec_ours = decoder_pipes(decoder_config)
    ref = diffusers.WuerstchenCombinedPipeline(**dec_ref.components,
                                               **{f"prior_{k}": v for k, v in prior_ref.components.items()})
    ours = WuerstchenCombinedPipeline(**dec_ours.components,
                                      **{f"prior_{k}": v for k, v in prior_ours.components.items()})
    for p in (ref, ours):
        p.set_progress_bar_config(disable=True)
    return ref, ours


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
