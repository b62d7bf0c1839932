"""Tiny Kandinsky 2.1 components (Diffusers' 2.1 test sizes, smaller images), as Diffusers/ours pairs over the
same weights: a local XLM-RoBERTa tokenizer, MultilingualCLIP, the text+image UNet, MoVQ and the prior."""

from __future__ import annotations

import functools
import tempfile

import torch

import diffusers
from kandinsky_fixtures import DDIM, EMBED, UNCLIP, _randomize, image_encoder, image_processor, movq, ours_of, prior
from kandinsky_fixtures import scheduler_pair, text_encoder, tokenizer

UNET21 = dict(in_channels=4, out_channels=8, addition_embed_type="text_image",
              down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
              up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
              mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
              encoder_hid_dim=EMBED, encoder_hid_dim_type="text_image_proj", cross_attention_dim=EMBED,
              attention_head_dim=4, resnet_time_scale_shift="scale_shift", class_embed_type=None)
WORDS = "a red cat dog photo of the house blurry low bad big small green blue".split()


@functools.lru_cache(maxsize=None)
def xlmr_tokenizer():
    """A tiny sentencepiece-style (Unigram) XLM-RoBERTa tokenizer: whole words, then letters."""
    from transformers import XLMRobertaTokenizer

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0 - i * 0.01) for i, w in enumerate(WORDS)]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("\u2581", -3.0), ("<mask>", 0.0)]
    tok = XLMRobertaTokenizer(vocab=vocab, model_max_length=77)
    folder = tempfile.mkdtemp(prefix="kandinsky21-tok-")
    tok.save_pretrained(folder)
    return XLMRobertaTokenizer.from_pretrained(folder)


MCLIP = dict(numDims=EMBED, transformerDimensions=EMBED, hidden_size=EMBED, intermediate_size=37,
             num_attention_heads=4, num_hidden_layers=2, vocab_size=48)


def mclip(seed: int = 0):
    """Diffusers' MultilingualCLIP and ours, same weights."""
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig as RefConfig
    from diffusers.pipelines.kandinsky.text_encoder import MultilingualCLIP as Ref
    from kernel_kandinsky.multilingual_clip import MCLIPConfig, MultilingualCLIP

    torch.manual_seed(seed)
    ref = Ref(RefConfig(**MCLIP)).eval()
    _randomize(ref, seed + 3, std=0.1)
    with torch.no_grad():  # unit LayerNorm gains keep the token states at unit scale, so prompts matter downstream
        for module in ref.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
    ours = MultilingualCLIP(MCLIPConfig(**MCLIP)).eval()
    result = ours.load_state_dict(ref.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    return ref, ours


def unet21(seed: int = 0, **over):
    torch.manual_seed(seed)
    ref = diffusers.UNet2DConditionModel(**{**UNET21, **over}).eval()
    _randomize(ref, seed + 1, std=0.05)
    return ref, ours_of(ref)


def _quiet(*pipes):
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return pipes


def prior21_pipes():
    import kernel

    p_ref, p_ours = prior()
    s_ref, s_ours = scheduler_pair("UnCLIPScheduler", **UNCLIP)
    shared = dict(image_encoder=image_encoder(), text_encoder=text_encoder(), tokenizer=tokenizer(),
                  image_processor=image_processor())
    return _quiet(diffusers.KandinskyPriorPipeline(prior=p_ref, scheduler=s_ref, **shared),
                  kernel.component("KandinskyPriorPipeline")(prior=p_ours, scheduler=s_ours, **shared))


def decoder21_pipes(name: str = "KandinskyPipeline", scheduler: str = "DDIMScheduler", unet_over=None, **sched_over):
    import kernel

    u_ref, u_ours = unet21(**dict(unet_over or {}))
    m_ref, m_ours = movq()
    t_ref, t_ours = mclip()
    s_ref, s_ours = scheduler_pair(scheduler, **{**(DDIM if scheduler == "DDIMScheduler" else {}), **sched_over})
    tok = xlmr_tokenizer()
    return _quiet(getattr(diffusers, name)(text_encoder=t_ref, tokenizer=tok, unet=u_ref, scheduler=s_ref, movq=m_ref),
                  kernel.component(name)(text_encoder=t_ours, tokenizer=tok, unet=u_ours, scheduler=s_ours,
                                         movq=m_ours))


def combined21_pipes(name: str = "KandinskyCombinedPipeline", unet_over=None):
    """Diffusers' 2.1 combined pipeline and ours over the same weights (prior + decoder)."""
    import kernel

    p_ref, p_ours = prior()
    u_ref, u_ours = unet21(**dict(unet_over or {}))
    m_ref, m_ours = movq()
    t_ref, t_ours = mclip()
    s_ref, s_ours = scheduler_pair("DDIMScheduler", **DDIM)
    ps_ref, ps_ours = scheduler_pair("UnCLIPScheduler", **UNCLIP)
    shared = dict(tokenizer=xlmr_tokenizer(), prior_image_encoder=image_encoder(), prior_text_encoder=text_encoder(),
                  prior_tokenizer=tokenizer(), prior_image_processor=image_processor())
    ref = getattr(diffusers, name)(text_encoder=t_ref, unet=u_ref, scheduler=s_ref, movq=m_ref, prior_prior=p_ref,
                                   prior_scheduler=ps_ref, **shared)
    ours = kernel.component(name)(text_encoder=t_ours, unet=u_ours, scheduler=s_ours, movq=m_ours,
                                  prior_prior=p_ours, prior_scheduler=ps_ours, **shared)
    return _quiet(ref, ours)
