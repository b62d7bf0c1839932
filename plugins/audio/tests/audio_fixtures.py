"""Tiny audio components built locally (no downloads), shared by the kernel-audio tests.

Each builder returns Diffusers' module (the oracle) and ours with the same weights where the class
is ours; transformers modules (CLAP, the vocoder) and the tokenizer are shared as they are.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusers
from kernel.registry import get_registry

UNET = dict(block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=(8, 16), class_embed_type="simple_projection", projection_class_embeddings_input_dim=32,
            class_embeddings_concat=True, norm_num_groups=4, attention_head_dim=2)
VAE = dict(block_out_channels=[8, 16], in_channels=1, out_channels=1, down_block_types=["DownEncoderBlock2D"] * 2,
           up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=4)
SCHED = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
VOCODER = dict(model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[2, 2],
               upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
               normalize_before=False)
PROMPT = "A hammer hitting a wooden surface"


def ours_of(module):
    """Our class of the same name, from the Diffusers module's config, with the same weights."""
    model = get_registry().resolve(type(module).__name__).from_config(dict(module.config))
    result = model.load_state_dict(module.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


def randomise(module: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
    """Replace every parameter by seeded noise: default inits (small vocoder weights, zeroed layers)
    give waveforms too close to zero to compare."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


# ---------------------------------------------------------------- tokenizer
def _byte_chars() -> list[str]:
    # The GPT-2 / RoBERTa byte-level alphabet: printable bytes stand for themselves, the rest map to 256+.
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


_MERGES = ["Ġ h", "Ġ a", "Ġ w", "i n", "e r", "o o", "Ġh a"]
_TOKENIZER = None


def tokenizer():
    """A real ``RobertaTokenizer`` over a tiny byte-level vocabulary (single bytes plus a few merges)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from transformers import RobertaTokenizer

        folder = Path(tempfile.mkdtemp(prefix="tiny-roberta-"))
        tokens = ["<s>", "<pad>", "</s>", "<unk>", *_byte_chars(), *(m.replace(" ", "") for m in _MERGES), "<mask>"]
        (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(tokens))}))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
        _TOKENIZER = RobertaTokenizer.from_pretrained(str(folder), model_max_length=77)
    return _TOKENIZER


# ---------------------------------------------------------------- transformers models
def _text_config(**over):
    from transformers import ClapTextConfig

    tok = tokenizer()
    cfg = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=32, intermediate_size=37,
               layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tok),
               projection_dim=32, max_position_embeddings=80)
    return ClapTextConfig(**{**cfg, **over})


def clap_text(seed=2):
    from transformers import ClapTextModelWithProjection

    torch.manual_seed(seed)
    return ClapTextModelWithProjection(_text_config()).eval()


def clap_model(seed=2):
    """A tiny ``ClapModel`` (text and audio branches, shared 32-d projection)."""
    from transformers import ClapAudioConfig, ClapConfig, ClapModel

    torch.manual_seed(seed)
    audio = ClapAudioConfig(spec_size=64, window_size=4, num_mel_bins=64, intermediate_size=37, layer_norm_eps=1e-05,
                            depths=[2, 2], num_attention_heads=[2, 2], num_hidden_layers=2, hidden_size=192,
                            patch_size=2, patch_stride=2, patch_embed_input_channels=4)
    text = _text_config(hidden_size=16, num_attention_heads=2)
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=32)
    return ClapModel(config).eval()


def feature_extractor(sampling_rate=16000):
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(feature_size=64, sampling_rate=sampling_rate, hop_length=7900, max_length_s=1,
                                fft_window_size=1024, truncation="fusion", padding="repeatpad",
                                frequency_max=min(14000, sampling_rate // 2))


def vocoder(seed=5, **over):
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(seed)
    return randomise(SpeechT5HifiGan(SpeechT5HifiGanConfig(**{**VOCODER, **over})).eval(), seed, std=0.2)


# ---------------------------------------------------------------- our/Diffusers pairs
def unet(seed=0, **over):
    torch.manual_seed(seed)
    d = diffusers.UNet2DConditionModel(**{**UNET, **over}).eval()
    if d.class_embedding is not None:  # a stronger text conditioning, so a wrong prompt path shows in the waveform
        with torch.no_grad():
            d.class_embedding.weight.mul_(10)
    return d, ours_of(d)


def vae(seed=1, **over):
    torch.manual_seed(seed)
    d = diffusers.AutoencoderKL(**{**VAE, **over}).eval()
    return d, ours_of(d)


def scheduler_pair(name="DDIMScheduler", **over):
    d = getattr(diffusers, name)(**{**SCHED, **over}) if name == "DDIMScheduler" else getattr(diffusers, name)(**over)
    return d, get_registry().resolve(name).from_config(dict(d.config))


def audioldm_components(sched="DDIMScheduler", unet_over=None, vocoder_over=None):
    """(Diffusers components, our components) for AudioLDM."""
    du, ku = unet(**(unet_over or {}))
    dv, kv = vae()
    ds, ks = scheduler_pair(sched)
    shared = dict(text_encoder=clap_text(), tokenizer=tokenizer(), vocoder=vocoder(**(vocoder_over or {})))
    return dict(unet=du, vae=dv, scheduler=ds, **shared), dict(unet=ku, vae=kv, scheduler=ks, **shared)


def gen(seed=0, n=None):
    if n is None:
        return torch.Generator().manual_seed(seed)
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def max_diff(a, b) -> float:
    a = a.float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.float().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run fastest on one thread, above all on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def transformers4_clap(clap):
    """The same ``ClapModel`` weights behind transformers 4's ``get_text_features`` (a tensor), which
    Diffusers' MusicLDM oracle needs; transformers 5 returns an output object instead."""
    from transformers import ClapModel

    class Clap4(ClapModel):
        def get_text_features(self, *args, **kwargs):
            out = super().get_text_features(*args, **kwargs)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

    twin = Clap4(clap.config).eval()
    twin.load_state_dict(clap.state_dict())
    return twin


def musicldm_components(sched="DDIMScheduler", fe_rate=16000):
    """(Diffusers components, our components) for MusicLDM; the CLAP weights are the same on both sides."""
    du, ku = unet()
    dv, kv = vae()
    ds, ks = scheduler_pair(sched)
    clap = clap_model()
    shared = dict(tokenizer=tokenizer(), feature_extractor=feature_extractor(fe_rate), vocoder=vocoder())
    return (dict(unet=du, vae=dv, scheduler=ds, text_encoder=transformers4_clap(clap), **shared),
            dict(unet=ku, vae=kv, scheduler=ks, text_encoder=clap, **shared))
