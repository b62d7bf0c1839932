"""Tiny AnimateDiff components built locally: Diffusers' (the oracle) and ours with the same weights."""

from __future__ import annotations

import tempfile

import numpy as np
import PIL.Image
import pytest
import torch

import diffusers
import kernel
from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer

UNET = dict(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, norm_num_groups=2, attention_head_dim=2)
ADAPTER = dict(block_out_channels=(8, 16), motion_layers_per_block=1, motion_norm_num_groups=2,
               motion_num_attention_heads=2, motion_max_seq_length=8)
VAE = dict(block_out_channels=[4, 8], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
           up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2)
SCHED = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False)
SIZE = 16  # pixels; the tiny VAE halves it, so latents are 8 x 8
FRAMES = 4


def ours_of(module):
    """Our class of the same name, from the Diffusers module's config, with its weights."""
    model = kernel.component(type(module).__name__).from_config(dict(module.config))
    result = model.load_state_dict(module.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


def pair(cls_name: str, seed: int, **config):
    torch.manual_seed(seed)
    theirs = getattr(diffusers, cls_name)(**config).eval()
    return theirs, ours_of(theirs)


_TOKENIZER = []


def tokenizer():
    if not _TOKENIZER:
        _TOKENIZER.append(tiny_clip_tokenizer(tempfile.mkdtemp(prefix="tok-ad-")))
    return _TOKENIZER[0]


def text_encoder(seed=2):
    te = tiny_clip_text_model(tokenizer(), seed=seed, num_hidden_layers=2)
    # Diffusers 0.42 reads text_encoder.text_model for clip_skip; transformers 5 flattened CLIPTextModel.
    if not hasattr(te, "text_model"):
        object.__setattr__(te, "text_model", te)
    return te


def scheduler_pair(name="DDIMScheduler", **over):
    theirs = getattr(diffusers, name).from_config({**SCHED, **over})
    return theirs, kernel.component(name).from_config(dict(theirs.config))


def components(sched="DDIMScheduler", adapter_over=None, unet_over=None, seed=0):
    """(Diffusers components, ours) for AnimateDiffPipeline, same weights."""
    du, ku = pair("UNet2DConditionModel", seed, **{**UNET, **(unet_over or {})})
    da, ka = pair("MotionAdapter", seed + 1, **{**ADAPTER, **(adapter_over or {})})
    dv, kv = pair("AutoencoderKL", seed + 2, **VAE)
    ds, ks = scheduler_pair(sched)
    te, tok = text_encoder(seed + 3), tokenizer()
    common = dict(text_encoder=te, tokenizer=tok, feature_extractor=None, image_encoder=None)
    return (dict(unet=du, motion_adapter=da, vae=dv, scheduler=ds, **common),
            dict(unet=ku, motion_adapter=ka, vae=kv, scheduler=ks, **common))


def pipelines(name="AnimateDiffPipeline", **kw):
    d, k = components(**kw)
    theirs = getattr(diffusers, name)(**d)
    ours = kernel.component(name)(**k)
    theirs.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(disable=True)
    return theirs, ours


def gen(seed=0, n=None):
    if n is None:
        return torch.Generator().manual_seed(seed)
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def video(frames=FRAMES, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(frames)]


def as_array(frames) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        return frames.float().cpu().numpy()
    if isinstance(frames, list):  # lists (per video) of PIL frames
        return np.stack([np.stack([np.asarray(f, dtype=np.float32) / 255 for f in v]) for v in frames])
    return np.asarray(frames)


def max_diff(a, b) -> float:
    a, b = as_array(a), as_array(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run fastest on one thread, above all on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
