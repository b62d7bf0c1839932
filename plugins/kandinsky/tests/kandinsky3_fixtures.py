"""Tiny Kandinsky 3 components (the sizes of Diffusers' Kandinsky 3 tests): a Diffusers pipeline saved to a
folder, which ``kernel.load`` reads back as ours."""

from __future__ import annotations

import functools
import tempfile

import torch

import diffusers
from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer

UNET3 = dict(in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=3,
             block_out_channels=(32, 64), cross_attention_dim=4, encoder_hid_dim=32)
MOVQ3 = dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
             in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
             num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
             vq_embed_dim=4)
DDPM3 = dict(beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="squaredcos_cap_v2", clip_sample=True,
             thresholding=False)


def reference_pipeline() -> "diffusers.Kandinsky3Pipeline":
    torch.manual_seed(0)
    unet = diffusers.Kandinsky3UNet(**UNET3).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # Diffusers zero-initialises the norm modulation: randomise everything
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    torch.manual_seed(0)
    movq = diffusers.VQModel(**MOVQ3).eval()
    tok = tiny_t5_tokenizer()
    pipe = diffusers.Kandinsky3Pipeline(tokenizer=tok, text_encoder=tiny_t5_encoder(tok, d_model=32, seed=1),
                                        unet=unet, scheduler=diffusers.DDPMScheduler(**DDPM3), movq=movq)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@functools.lru_cache(maxsize=None)
def folder() -> tuple[str, "diffusers.Kandinsky3Pipeline"]:
    path = tempfile.mkdtemp(prefix="kandinsky3-")
    ref = reference_pipeline()
    ref.save_pretrained(path)
    return path, ref


@functools.lru_cache(maxsize=None)
def img2img_folder() -> tuple[str, "diffusers.Kandinsky3Img2ImgPipeline"]:
    path = tempfile.mkdtemp(prefix="kandinsky3-img2img-")
    ref = diffusers.Kandinsky3Img2ImgPipeline(**reference_pipeline().components)
    ref.set_progress_bar_config(disable=True)
    ref.save_pretrained(path)
    return path, ref


def picture(seed: int = 0, size: tuple[int, int] = (48, 32)):
    import numpy as np
    import PIL.Image

    rng = np.random.RandomState(seed)
    return PIL.Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))
