"""Tiny Stable Audio models built the same way here and in Diffusers (the oracle), from the same weights."""

from __future__ import annotations

import torch

OOBLECK = dict(encoder_hidden_size=8, downsampling_ratios=[2, 2], channel_multiples=[1, 2], decoder_channels=8,
               decoder_input_channels=4, audio_channels=2, sampling_rate=64)
DIT = dict(sample_size=16, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
           num_key_value_attention_heads=2, out_channels=4, cross_attention_dim=16, time_proj_dim=8,
           global_states_input_dim=32, cross_attention_input_dim=16)
PROJECTION = dict(text_encoder_dim=24, conditioning_dim=16, min_value=0, max_value=512)


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Give Snake parameters (zero at init) and every other parameter a random perturbation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.endswith(("alpha", "beta")):
                p.copy_(noise * 0.5)
            else:
                p.add_(noise * scale * (p.std() if p.numel() > 1 else 1.0))
    return model.eval()


def copy_into(ours: torch.nn.Module, theirs: torch.nn.Module) -> torch.nn.Module:
    """Load ``theirs``' state dict into ``ours``; every key must match."""
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours.eval()


def oobleck_pair(seed: int = 0):
    from diffusers import AutoencoderOobleck as Theirs

    from kernel_stable_audio import AutoencoderOobleck

    torch.manual_seed(seed)
    theirs = randomize(Theirs(**OOBLECK), seed)
    return copy_into(AutoencoderOobleck(**OOBLECK), theirs), theirs


def dit_pair(seed: int = 0):
    from diffusers import StableAudioDiTModel as Theirs

    from kernel_stable_audio import StableAudioDiTModel

    torch.manual_seed(seed)
    theirs = randomize(Theirs(**DIT), seed)
    return copy_into(StableAudioDiTModel(**DIT), theirs), theirs


def projection_pair(seed: int = 0):
    from diffusers.pipelines.stable_audio import StableAudioProjectionModel as Theirs

    from kernel_stable_audio import StableAudioProjectionModel

    torch.manual_seed(seed)
    theirs = randomize(Theirs(**PROJECTION), seed)
    return copy_into(StableAudioProjectionModel(**PROJECTION), theirs), theirs


def _text_parts(seed: int = 0):
    from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer

    tokenizer = tiny_t5_tokenizer(model_max_length=12)
    return tokenizer, tiny_t5_encoder(tokenizer, d_model=PROJECTION["text_encoder_dim"], seed=seed)


def pipelines(seed: int = 0):
    """``(ours, theirs)``: tiny Stable Audio pipelines with the same weights (the T5 encoder and tokenizer shared)."""
    from diffusers import CosineDPMSolverMultistepScheduler as TheirScheduler
    from diffusers import StableAudioPipeline as Theirs

    import kernel

    vae, their_vae = oobleck_pair(seed)
    dit, their_dit = dit_pair(seed + 1)
    projection, their_projection = projection_pair(seed + 2)
    tokenizer, text_encoder = _text_parts(seed)
    ours = kernel.component("StableAudioPipeline")(
        vae=vae, text_encoder=text_encoder, projection_model=projection, tokenizer=tokenizer, transformer=dit,
        scheduler=kernel.component("CosineDPMSolverMultistepScheduler")())
    theirs = Theirs(vae=their_vae, text_encoder=text_encoder, projection_model=their_projection, tokenizer=tokenizer,
                    transformer=their_dit, scheduler=TheirScheduler())
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    return ours, theirs
