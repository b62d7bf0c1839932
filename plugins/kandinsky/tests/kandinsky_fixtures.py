"""Tiny Kandinsky 2.2 components built locally (Diffusers' test sizes, smaller images), as pairs:
Diffusers' module (the oracle) and ours with the same weights.  CLIP models and processors come from
transformers and are shared by both pipelines."""

from __future__ import annotations

import functools
import tempfile

import torch

import diffusers
from kernel.registry import get_registry
from kernel_clip.testing import tiny_clip_tokenizer

EMBED = 32  # CLIP embedding width of the tiny prior / image encoder / UNet image projection
MOVQ = dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
            in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
            num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
            vq_embed_dim=4)
UNET = dict(in_channels=4, out_channels=8, addition_embed_type="image",
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
            encoder_hid_dim=EMBED, encoder_hid_dim_type="image_proj", cross_attention_dim=100, attention_head_dim=4,
            resnet_time_scale_shift="scale_shift", class_embed_type=None)
DDIM = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
            set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon", thresholding=False)
UNCLIP = dict(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000, clip_sample=True,
              clip_sample_range=10.0)


def ours_of(module):
    """Our class of the same name, built from the Diffusers module's config, same weights."""
    cls = get_registry().resolve(type(module).__name__)
    model = cls.from_config(dict(module.config))
    result = model.load_state_dict(module.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


def scheduler_pair(name: str, **config):
    ref = getattr(diffusers, name)(**config)
    return ref, get_registry().resolve(name).from_config(dict(ref.config))


def _randomize(module, seed: int, std: float = 0.2):
    """Non-trivial weights (zero-initialised layers would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


@functools.lru_cache(maxsize=None)
def tokenizer():
    return tiny_clip_tokenizer(tempfile.mkdtemp(prefix="kandinsky-tok-"))


@functools.lru_cache(maxsize=None)
def text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tok = tokenizer()
    torch.manual_seed(0)
    config = CLIPTextConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                            hidden_size=EMBED, projection_dim=EMBED, intermediate_size=37, layer_norm_eps=1e-5,
                            num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tok),
                            max_position_embeddings=tok.model_max_length)
    return CLIPTextModelWithProjection(config).eval()


@functools.lru_cache(maxsize=None)
def image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=EMBED, image_size=32, projection_dim=EMBED, intermediate_size=37,
                              num_attention_heads=4, num_channels=3, num_hidden_layers=2, patch_size=8)
    return CLIPVisionModelWithProjection(config).eval()


@functools.lru_cache(maxsize=None)
def image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(crop_size=32, do_center_crop=True, do_normalize=True, do_resize=True,
                              image_mean=[0.48145466, 0.4578275, 0.40821073],
                              image_std=[0.26862954, 0.26130258, 0.27577711], resample=3, size=32)


def prior(seed: int = 0):
    torch.manual_seed(seed)
    ref = diffusers.PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=EMBED, num_layers=1)
    _randomize(ref, seed)
    with torch.no_grad():
        ref.clip_std.fill_(1.0)
    return ref.eval(), ours_of(ref)


def unet(seed: int = 0, **over):
    torch.manual_seed(seed)
    ref = diffusers.UNet2DConditionModel(**{**UNET, **over}).eval()
    _randomize(ref, seed + 1, std=0.05)
    return ref, ours_of(ref)


def movq(seed: int = 0):
    torch.manual_seed(seed)
    ref = diffusers.VQModel(**MOVQ).eval()
    return ref, ours_of(ref)


def prior_pipes(**scheduler_over):
    import kernel

    p_ref, p_ours = prior()
    s_ref, s_ours = scheduler_pair("UnCLIPScheduler", **{**UNCLIP, **scheduler_over})
    shared = dict(image_encoder=image_encoder(), text_encoder=text_encoder(), tokenizer=tokenizer(),
                  image_processor=image_processor())
    ref = diffusers.KandinskyV22PriorPipeline(prior=p_ref, scheduler=s_ref, **shared)
    ours = kernel.component("KandinskyV22PriorPipeline")(prior=p_ours, scheduler=s_ours, **shared)
    for pipe in (ref, ours):
        pipe.set_progress_bar_config(disable=True)
    return ref, ours


def decoder_pipes(name: str = "KandinskyV22Pipeline", scheduler: str = "DDIMScheduler", unet_over=None, **sched_over):
    import kernel

    u_ref, u_ours = unet(**dict(unet_over or {}))
    m_ref, m_ours = movq()
    config = {**(DDIM if scheduler == "DDIMScheduler" else {}), **sched_over}
    s_ref, s_ours = scheduler_pair(scheduler, **config)
    ref = getattr(diffusers, name)(unet=u_ref, scheduler=s_ref, movq=m_ref)
    ours = kernel.component(name)(unet=u_ours, scheduler=s_ours, movq=m_ours)
    for pipe in (ref, ours):
        pipe.set_progress_bar_config(disable=True)
    return ref, ours


def embeds(batch: int = 1, seed: int = 0, width: int = EMBED) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, width, generator=g), torch.randn(batch, width, generator=g)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def max_diff(a, b) -> float:
    a, b = (torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x for x in (a, b))
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def combined_pipes(name: str = "KandinskyV22CombinedPipeline", unet_over=None):
    """Diffusers' combined pipeline and ours over the same weights (prior + decoder)."""
    import kernel

    p_ref, p_ours = prior()
    u_ref, u_ours = unet(**dict(unet_over or {}))
    m_ref, m_ours = movq()
    s_ref, s_ours = scheduler_pair("DDIMScheduler", **DDIM)
    ps_ref, ps_ours = scheduler_pair("UnCLIPScheduler", **UNCLIP)
    shared = dict(prior_image_encoder=image_encoder(), prior_text_encoder=text_encoder(), prior_tokenizer=tokenizer(),
                  prior_image_processor=image_processor())
    ref = getattr(diffusers, name)(unet=u_ref, scheduler=s_ref, movq=m_ref, prior_prior=p_ref,
                                   prior_scheduler=ps_ref, **shared)
    ours = kernel.component(name)(unet=u_ours, scheduler=s_ours, movq=m_ours, prior_prior=p_ours,
                                  prior_scheduler=ps_ours, **shared)
    for pipe in (ref, ours):
        pipe.set_progress_bar_config(disable=True)
    return ref, ours
