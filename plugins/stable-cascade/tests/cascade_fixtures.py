"""Tiny Stable Cascade configs (the sizes of Diffusers' own Stable Cascade pipeline tests)."""

from __future__ import annotations

import functools
import tempfile

import torch

ATTN = ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock")
NO_ATTN = ("SDCascadeResBlock", "SDCascadeTimestepBlock")

#: Stage C (prior): CLIP text tokens, pooled text and image conditioning; bilinear level switch.
PRIOR = dict(conditioning_dim=128, block_out_channels=(128, 128), num_attention_heads=(2, 2),
             down_num_layers_per_block=(1, 1), up_num_layers_per_block=(1, 1), switch_level=(False,),
             clip_image_in_channels=768, clip_text_in_channels=32, clip_text_pooled_in_channels=32,
             dropout=(0.1, 0.1))

#: Stage B (decoder): effnet and pixel mappers, four levels, repeat mappers, strided level switches.
DECODER = dict(in_channels=4, out_channels=4, conditioning_dim=128, block_out_channels=(16, 32, 32, 32),
               num_attention_heads=(-1, -1, 1, 2), down_num_layers_per_block=(1, 1, 1, 1),
               up_num_layers_per_block=(1, 1, 1, 1), down_blocks_repeat_mappers=(1, 1, 1, 1),
               up_blocks_repeat_mappers=(3, 3, 2, 2), block_types_per_layer=(NO_ATTN, NO_ATTN, ATTN, ATTN),
               clip_text_pooled_in_channels=32, clip_seq=4, effnet_in_channels=16, pixel_mapper_in_channels=3,
               dropout=(0.1, 0.1, 0.1, 0.1), self_attn=True, timestep_conditioning_type=("sca",),
               kernel_size=3, patch_size=1)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Non-zero weights everywhere (the zero-initialised GRN and mappers would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def prior_inputs(batch: int = 2, seed: int = 0, size: int = 8) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(sample=torch.randn(batch, 16, size, size, generator=g), timestep_ratio=torch.rand(batch, generator=g),
                clip_text_pooled=torch.randn(batch, 1, 32, generator=g), clip_text=torch.randn(batch, 5, 32, generator=g),
                clip_img=torch.randn(batch, 1, 768, generator=g))


def decoder_inputs(batch: int = 2, seed: int = 0, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(sample=torch.randn(batch, 4, size, size, generator=g), timestep_ratio=torch.rand(batch, generator=g),
                clip_text_pooled=torch.randn(batch, 1, 32, generator=g),
                effnet=torch.randn(batch, 16, 6, 6, generator=g))


# ---------------------------------------------------------------- pipelines: Diffusers' (the oracle) and ours
#: Diffusers' Stable Cascade decoder test VQ-GAN.
VQGAN = dict(in_channels=3, out_channels=3, up_down_scale_factor=2, levels=2, bottleneck_blocks=1, embed_dim=16,
             latent_channels=4, num_vq_embeddings=12, scale_factor=0.3764)


@functools.lru_cache(maxsize=None)
def tokenizer():
    from kernel_clip.testing import tiny_clip_tokenizer

    return tiny_clip_tokenizer(tempfile.mkdtemp(prefix="cascade-tok-"))


@functools.lru_cache(maxsize=None)
def text_encoder(seed: int = 0):
    from kernel_clip.testing import tiny_clip_text_model

    return tiny_clip_text_model(tokenizer(), seed=seed, with_projection=True, projection_dim=32,
                                num_hidden_layers=2).eval()


@functools.lru_cache(maxsize=None)
def image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, image_size=32, projection_dim=768, intermediate_size=37,
                              num_attention_heads=4, num_channels=3, num_hidden_layers=2, patch_size=8)
    return CLIPVisionModelWithProjection(config).eval()


@functools.lru_cache(maxsize=None)
def feature_extractor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(crop_size=32, size=32, do_center_crop=True, do_resize=True, do_normalize=True)


def unet_pair(config: dict, seed: int = 0, std: float = 0.1):
    import diffusers

    from kernel_stable_cascade import StableCascadeUNet

    ours = randomize(StableCascadeUNet(**config), seed, std)
    ref = diffusers.StableCascadeUNet(**config).eval()
    ref.load_state_dict(ours.state_dict())
    return ref, ours


def vqgan_pair(seed: int = 0):
    from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel as RefPaella

    from kernel_stable_cascade import PaellaVQModel

    ours = randomize(PaellaVQModel(**VQGAN), seed)
    ref = RefPaella(**VQGAN).eval()
    ref.load_state_dict(ours.state_dict())
    return ref, ours


def scheduler_pair():
    import diffusers

    from kernel_stable_cascade import DDPMWuerstchenScheduler

    return diffusers.DDPMWuerstchenScheduler(), DDPMWuerstchenScheduler()


def _quiet(*pipes):
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return pipes


def prior_pipes(with_images: bool = False):
    import diffusers

    from kernel_stable_cascade import StableCascadePriorPipeline

    u_ref, u_ours = unet_pair(PRIOR, std=0.03)  # the 128-wide prior grows large values with bigger weights
    s_ref, s_ours = scheduler_pair()
    shared = dict(text_encoder=text_encoder(), tokenizer=tokenizer())
    if with_images:
        shared.update(image_encoder=image_encoder(), feature_extractor=feature_extractor())
    ref = diffusers.StableCascadePriorPipeline(prior=u_ref, scheduler=s_ref, **shared)
    ours = StableCascadePriorPipeline(prior=u_ours, scheduler=s_ours, **shared)
    return _quiet(ref, ours)


def decoder_pipes():
    import diffusers

    from kernel_stable_cascade import StableCascadeDecoderPipeline

    u_ref, u_ours = unet_pair(DECODER, seed=1)
    v_ref, v_ours = vqgan_pair(seed=2)
    s_ref, s_ours = scheduler_pair()
    shared = dict(text_encoder=text_encoder(), tokenizer=tokenizer())
    ref = diffusers.StableCascadeDecoderPipeline(decoder=u_ref, vqgan=v_ref, scheduler=s_ref, **shared)
    ours = StableCascadeDecoderPipeline(decoder=u_ours, vqgan=v_ours, scheduler=s_ours, **shared)
    return _quiet(ref, ours)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def max_diff(a, b) -> float:
    a, b = (x if isinstance(x, torch.Tensor) else torch.as_tensor(x) for x in (a, b))
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.float() - b.float()).abs().max().item()


def combined_pipes():
    """Diffusers' combined pipeline and ours over the same weights; the decoder stage has its own text encoder."""
    import diffusers

    from kernel_stable_cascade import StableCascadeCombinedPipeline

    p_ref, p_ours = unet_pair(PRIOR, std=0.03)
    u_ref, u_ours = unet_pair(DECODER, seed=1)
    v_ref, v_ours = vqgan_pair(seed=2)
    (s_ref, s_ours), (ps_ref, ps_ours) = scheduler_pair(), scheduler_pair()
    shared = dict(text_encoder=text_encoder(1), tokenizer=tokenizer(), prior_text_encoder=text_encoder(),
                  prior_tokenizer=tokenizer())
    ref = diffusers.StableCascadeCombinedPipeline(decoder=u_ref, vqgan=v_ref, scheduler=s_ref, prior_prior=p_ref,
                                                  prior_scheduler=ps_ref, **shared)
    ours = StableCascadeCombinedPipeline(decoder=u_ours, vqgan=v_ours, scheduler=s_ours, prior_prior=p_ours,
                                         prior_scheduler=ps_ours, **shared)
    return _quiet(ref, ours)
