"""Tiny SD3 / Flux / PixArt pipeline pairs (Diffusers, ours) with equal weights, for the kernel-lora tests.

Each pair has its own text encoders (loading a LoRA changes modules in place); tokenizers are shared.
The builders follow the family plugins' own tests (plugins/sd3, plugins/flux, plugins/pixart).
"""

from __future__ import annotations

import copy
import functools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import lora_fixtures as lf  # noqa: E402
from lora_fixtures import single_thread  # noqa: E402,F401

diffusers = lf.diffusers
import kernel  # noqa: E402
from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer  # noqa: E402
from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer  # noqa: E402

ours_of = lf.fx.ours_of
#: Transformer layers the test LoRAs adapt (attention, feed-forward, modulation, single-block projections).
SD3_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "ff.net.0.proj", "ff.net.2", "ff_context.net.2", "norm1.linear")
FLUX_TARGETS = SD3_TARGETS + ("proj_mlp", "proj_out", "norm.linear", "x_embedder", "context_embedder", "norm_out.linear")
PIXART_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_out", "caption_projection.linear_1")
TEXT_TARGETS = lf.TEXT_TARGETS


@functools.lru_cache(maxsize=None)
def _tokenizers():
    return tiny_clip_tokenizer(), tiny_clip_tokenizer(), tiny_t5_tokenizer()


def _jitter(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _vae(latent_channels: int, **over):
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4),
                                   down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                   layers_per_block=1, latent_channels=latent_channels, norm_num_groups=1, **over).eval()


def _scheduler(d):
    return kernel.component(type(d).__name__).from_config(dict(d.config))


def _pair(name: str, parts: dict, copied: tuple[str, ...]):
    """``(Diffusers pipeline, ours)``: ours gets our models of the same weights and copies of ``copied``."""
    ours = dict(parts)
    for key in ("transformer", "vae"):
        ours[key] = ours_of(parts[key])
    ours["scheduler"] = _scheduler(parts["scheduler"])
    for key in copied:
        ours[key] = copy.deepcopy(parts[key])
    d, o = getattr(diffusers, name)(**parts), kernel.component(name)(**ours)
    for p in (d, o):
        p.set_progress_bar_config(disable=True)
    return d, o


def sd3_pipelines():
    lf.allow_transformers_peft()
    tok, tok_2, t5_tok = _tokenizers()
    torch.manual_seed(0)
    transformer = _jitter(diffusers.SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=16,
        pos_embed_max_size=32))
    parts = dict(transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                 vae=_vae(16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
                 text_encoder=tiny_clip_text_model(tok, seed=1, with_projection=True), tokenizer=tok,
                 text_encoder_2=tiny_clip_text_model(tok_2, seed=2, with_projection=True), tokenizer_2=tok_2,
                 text_encoder_3=tiny_t5_encoder(t5_tok, d_model=32, seed=3), tokenizer_3=t5_tok)
    return _pair("StableDiffusion3Pipeline", parts, ("text_encoder", "text_encoder_2"))


def flux_pipelines():
    lf.allow_transformers_peft()
    tok, _, t5_tok = _tokenizers()
    torch.manual_seed(0)
    transformer = _jitter(diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True))
    parts = dict(transformer=transformer, vae=_vae(4, use_quant_conv=False, use_post_quant_conv=False,
                                                   shift_factor=0.0609, scaling_factor=1.5035),
                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=16,
                                                                     max_image_seq_len=256),
                 text_encoder=tiny_clip_text_model(tok, seed=1), tokenizer=tok,
                 text_encoder_2=tiny_t5_encoder(t5_tok, d_model=32, seed=2), tokenizer_2=t5_tok)
    return _pair("FluxPipeline", parts, ("text_encoder",))


def pixart_pipelines():
    _, _, t5_tok = _tokenizers()
    torch.manual_seed(0)
    transformer = _jitter(diffusers.PixArtTransformer2DModel(
        sample_size=32, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6))
    parts = dict(transformer=transformer, vae=_vae(4), scheduler=diffusers.DPMSolverMultistepScheduler(),
                 text_encoder=tiny_t5_encoder(t5_tok, d_model=32, seed=1), tokenizer=t5_tok)
    return _pair("PixArtAlphaPipeline", parts, ())


CALLS = {
    "sd3": dict(prompt="a photo of a cat", num_inference_steps=2, height=32, width=32, output_type="np",
                max_sequence_length=16),
    "flux": dict(prompt="a photo of a cat", num_inference_steps=2, height=32, width=32, output_type="np",
                 max_sequence_length=16),
    "pixart": dict(prompt="a photo of a cat", num_inference_steps=2, height=32, width=32, output_type="np",
                   max_sequence_length=12, use_resolution_binning=False),
}


def images(pipe, family: str, seed: int = 0, **call):
    return pipe(generator=torch.Generator().manual_seed(seed), **{**CALLS[family], **call}).images


def tuner_count(pipe) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for c in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
               if isinstance(getattr(pipe, c, None), torch.nn.Module) for m in getattr(pipe, c).modules())


def changed(a, b, at_least: float = 0.05) -> bool:
    return float(np.abs(a - b).max()) > at_least


random_lora, prefixed, assert_close = lf.random_lora, lf.prefixed, lf.assert_close
