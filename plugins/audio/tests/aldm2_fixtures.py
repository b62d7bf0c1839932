"""Tiny AudioLDM 2 components built locally (no downloads): Diffusers' models (the oracle) and ours
with the same weights; transformers models (CLAP, T5, GPT-2, the vocoder) and tokenizers are shared."""

from __future__ import annotations

import torch

from diffusers.pipelines.audioldm2.modeling_audioldm2 import (
    AudioLDM2ProjectionModel as DiffusersProjection,
    AudioLDM2UNet2DConditionModel as DiffusersUNet,
)

import audio_fixtures as fx

# Sized like Diffusers' own AudioLDM 2 tests: a self-attention slot, then GPT-2 (16) and T5 (32) contexts.
UNET = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=32, in_channels=4,
            out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=([None, 16, 32], [None, 16, 32]),
            attention_head_dim=2)
PROJECTION = dict(text_encoder_dim=32, text_encoder_1_dim=32, langauge_model_dim=16)
T5_MAX = 16


def unet(seed=0, **over):
    torch.manual_seed(seed)
    d = DiffusersUNet(**{**UNET, **over}).eval()
    return d, fx.ours_of(d)


def projection(seed=3, **over):
    torch.manual_seed(seed)
    d = fx.randomise(DiffusersProjection(**{**PROJECTION, **over}).eval(), seed, std=0.3)
    return d, fx.ours_of(d)


def t5(seed=4):
    from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer

    tok = tiny_t5_tokenizer(model_max_length=T5_MAX)
    return tok, tiny_t5_encoder(tok, d_model=PROJECTION["text_encoder_1_dim"], seed=seed)


def gpt2(seed=6):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(seed)
    config = GPT2Config(n_embd=PROJECTION["langauge_model_dim"], n_head=2, n_layer=2, n_positions=64, vocab_size=50,
                        n_inner=24, max_new_tokens=8, bos_token_id=0, eos_token_id=0)
    return GPT2Model(config).eval()


def generating_twin(model):
    """The same ``GPT2Model`` weights with transformers' generation helpers, which Diffusers' AudioLDM 2
    oracle calls (``_update_model_kwargs_for_generation``); transformers 5's ``GPT2Model`` lacks them."""
    from transformers import GenerationMixin, GPT2Model

    class GPT2WithGeneration(GPT2Model, GenerationMixin):
        pass

    twin = GPT2WithGeneration(model.config).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def components(sched="DDIMScheduler", fe_rate=16000):
    """(Diffusers components, our components) for AudioLDM 2."""
    du, ku = unet()
    dv, kv = fx.vae()
    dp, kp = projection()
    ds, ks = fx.scheduler_pair(sched)
    tok2, enc2 = t5()
    lm = gpt2()
    shared = dict(text_encoder=fx.clap_model(), text_encoder_2=enc2, tokenizer=fx.tokenizer(), tokenizer_2=tok2,
                  feature_extractor=fx.feature_extractor(fe_rate), vocoder=fx.vocoder())
    return (dict(unet=du, vae=dv, projection_model=dp, scheduler=ds, language_model=generating_twin(lm), **shared),
            dict(unet=ku, vae=kv, projection_model=kp, scheduler=ks, language_model=lm, **shared))
